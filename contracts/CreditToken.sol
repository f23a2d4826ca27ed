// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title CreditToken
/// @notice The grid's unit of account: an ERC20 with 6 decimals and EIP-2612 permit, so a job can be
///         submitted and paid in one transaction. Only accounts with MINTER_ROLE create credits.
contract CreditToken is ERC20, ERC20Permit, AccessControl {
    /// @notice Role allowed to mint credits.
    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");

    /// @param admin receives DEFAULT_ADMIN_ROLE and MINTER_ROLE
    constructor(address admin) ERC20("dsq credit", "DSQC") ERC20Permit("dsq credit") {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(MINTER_ROLE, admin);
    }

    /// @notice Credits have 6 decimals: an escrow fits in 64 bits beside an address.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @notice Most credit units that can ever exist (keeps every balance far below 2**255).
    uint256 public constant MAX_SUPPLY = type(uint128).max;

    /// @notice Minting would take the supply above MAX_SUPPLY.
    error SupplyCapExceeded(uint256 supply, uint256 cap);

    /// @notice Creates `amount` credit units for `to`.
    /// @param to receiver of the new credits
    /// @param amount credit units to create
    function mint(address to, uint256 amount) external onlyRole(MINTER_ROLE) {
        uint256 supply = totalSupply() + amount;
        if (supply > MAX_SUPPLY) revert SupplyCapExceeded(supply, MAX_SUPPLY);
        _mint(to, amount);
    }
}
