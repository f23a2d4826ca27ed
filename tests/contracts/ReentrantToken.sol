// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title ReentrantToken (test only)
/// @notice An ERC20 whose transfer and transferFrom call back into a target (the job market) once armed, the
///         way a token with hooks (ERC777-style) or a malicious token would. Used by tests/test_hostile_input.py
///         to show that the market's nonReentrant guard stops re-entry through the credit token.
contract ReentrantToken is ERC20 {
    address public target;
    bytes public payload;
    bool public armed;
    bool public bubble;
    uint256 public attempts;
    bool public lastReentryOk;
    bytes public lastReentryError;

    constructor() ERC20("reentrant credit", "REC") {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice The next transfer or transferFrom calls `target` with `data` first (once). With `propagate`,
    ///         a failing re-entry reverts the transfer with the same error data.
    function arm(address target_, bytes calldata data, bool propagate) external {
        target = target_;
        payload = data;
        bubble = propagate;
        armed = true;
    }

    /// @notice Lets this contract act as an account of the market (own jobs, own balance).
    function act(address to, bytes calldata data) external returns (bytes memory ret) {
        bool ok;
        (ok, ret) = to.call(data);
        if (!ok) {
            assembly {
                revert(add(ret, 32), mload(ret))
            }
        }
    }

    function selfApprove(address spender) external {
        _approve(address(this), spender, type(uint256).max);
    }

    function transfer(address to, uint256 value) public override returns (bool) {
        _reenter();
        return super.transfer(to, value);
    }

    function transferFrom(address from, address to, uint256 value) public override returns (bool) {
        _reenter();
        return super.transferFrom(from, to, value);
    }

    function _reenter() private {
        if (!armed) return;
        armed = false;
        attempts += 1;
        (bool ok, bytes memory ret) = target.call(payload);
        lastReentryOk = ok;
        lastReentryError = ret;
        if (!ok && bubble) {
            assembly {
                revert(add(ret, 32), mload(ret))
            }
        }
    }
}
