// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Hardware, LabelConstraint, LabelOp, Prices, ProviderStatus, ProviderView} from "./GridTypes.sol";

/// @title ProviderRegistry
/// @notice Providers register their hardware, prices and labels; the admin approves, bans or removes
///         them; the job market (the contract that inherits this one) reserves and releases their
///         capacity. Price and label changes apply to new assignments only: an assignment snapshots
///         the rate.
abstract contract ProviderRegistry is AccessControl {
    /// @dev One provider in two storage words. Everything an assignment reads or writes (status,
    ///      free capacity, prices) is in word 0, so assigning touches one provider slot.
    struct ProviderRecord {
        // word 0
        ProviderStatus status;
        bool paused;
        uint32 id;
        uint32 freeCpus;
        uint16 freeGpus;
        uint32 freeMemMB;
        uint40 perCpuMinute;
        uint40 perGpuMinute;
        uint40 perGbMinute;
        // word 1
        uint32 cpus;
        uint16 gpus;
        uint32 memMB;
        uint32 labelEpoch; // bumped by each registration: labels of an earlier registration do not survive it
    }

    /// @notice Most labels one `setLabels` call may write (bounds the loop).
    uint256 public constant MAX_PROVIDER_LABELS = 32;

    mapping(address provider => ProviderRecord) internal _providers;
    mapping(uint32 id => address provider) internal _providerAt;
    mapping(address provider => mapping(uint32 epoch => mapping(bytes32 key => bytes32 value))) internal _labels;
    uint32 internal _providerCount;

    /// @notice A provider registered (status PENDING until the admin approves it).
    event ProviderRegistered(address indexed provider, uint32 id, Hardware hardware, Prices prices);
    /// @notice A provider's declared hardware changed.
    event ProviderHardwareUpdated(address indexed provider, Hardware hardware);
    /// @notice A provider's prices changed (new assignments only).
    event ProviderPricesUpdated(address indexed provider, Prices prices);
    /// @notice A provider set labels; a zero value removes the label.
    event ProviderLabelsSet(address indexed provider, string[] keys, bytes32[] values);
    /// @notice The admin changed a provider's registration status.
    event ProviderStatusChanged(address indexed provider, ProviderStatus status);
    /// @notice A provider paused (true) or resumed (false) taking new jobs.
    event ProviderPaused(address indexed provider, bool paused);

    /// @notice The account is already registered.
    error ProviderAlreadyRegistered(address provider);
    /// @notice The account is not a registered provider.
    error ProviderNotRegistered(address provider);
    /// @notice The provider is not approved (pending, banned or removed).
    error ProviderNotApproved(address provider);
    /// @notice The provider paused taking new jobs.
    error ProviderIsPaused(address provider);
    /// @notice The provider does not have the job's resources free.
    error InsufficientCapacity(address provider, Hardware needed, Hardware free);
    /// @notice Hardware declarations need at least one CPU and some memory.
    error InvalidHardware();
    /// @notice The price per CPU-minute must be positive, so every job has a positive rate.
    error ZeroCpuPrice();
    /// @notice The new hardware is smaller than what running and assigned jobs hold.
    error CapacityInUse(address provider, Hardware inUse);
    /// @notice The provider still holds jobs' capacity.
    error ProviderBusy(address provider);
    /// @notice Two arrays that go together differ in length.
    error LengthMismatch(uint256 a, uint256 b);
    /// @notice Too many labels in one call.
    error TooManyLabels(uint256 count, uint256 max);
    /// @notice The provider's labels do not satisfy the job's constraint on `key`.
    error LabelMismatch(uint256 jobId, bytes32 key);

    // ------------------------------------------------------------------ provider actions

    /// @notice Registers the caller as a provider, pending the admin's approval.
    /// @param hardware cpus, gpus and memory (MB) the provider offers
    /// @param prices credit units per cpu-minute (> 0), gpu-minute and GB-minute
    /// @param keys label names (e.g. "gpu.model")
    /// @param values encoded label values (see LabelConstraint)
    function registerProvider(
        Hardware calldata hardware,
        Prices calldata prices,
        string[] calldata keys,
        bytes32[] calldata values
    ) external {
        ProviderRecord storage p = _providers[msg.sender];
        ProviderStatus status = p.status;
        if (status != ProviderStatus.NONE && status != ProviderStatus.REMOVED) {
            revert ProviderAlreadyRegistered(msg.sender);
        }
        _checkHardware(hardware);
        if (prices.perCpuMinute == 0) revert ZeroCpuPrice();
        uint32 id = p.id;
        if (id == 0) {
            id = ++_providerCount;
            _providerAt[id] = msg.sender;
        }
        uint32 epoch = status == ProviderStatus.NONE ? 0 : p.labelEpoch + 1;
        _providers[msg.sender] = ProviderRecord({
            status: ProviderStatus.PENDING,
            paused: false,
            id: id,
            cpus: hardware.cpus,
            gpus: hardware.gpus,
            memMB: hardware.memMB,
            freeCpus: hardware.cpus,
            freeGpus: hardware.gpus,
            freeMemMB: hardware.memMB,
            perCpuMinute: prices.perCpuMinute,
            perGpuMinute: prices.perGpuMinute,
            perGbMinute: prices.perGbMinute,
            labelEpoch: epoch
        });
        emit ProviderRegistered(msg.sender, id, hardware, prices);
        if (keys.length != 0 || values.length != 0) _setLabels(keys, values);
    }

    /// @notice Changes the caller's declared hardware; cannot go below what its jobs hold.
    /// @param hardware the new totals
    function updateHardware(Hardware calldata hardware) external {
        ProviderRecord storage p = _registered(msg.sender);
        _checkHardware(hardware);
        uint32 usedCpus = p.cpus - p.freeCpus;
        uint16 usedGpus = p.gpus - p.freeGpus;
        uint32 usedMem = p.memMB - p.freeMemMB;
        if (hardware.cpus < usedCpus || hardware.gpus < usedGpus || hardware.memMB < usedMem) {
            revert CapacityInUse(msg.sender, Hardware(usedCpus, usedGpus, usedMem));
        }
        (p.cpus, p.gpus, p.memMB) = (hardware.cpus, hardware.gpus, hardware.memMB);
        (p.freeCpus, p.freeGpus, p.freeMemMB) = (hardware.cpus - usedCpus, hardware.gpus - usedGpus, hardware.memMB - usedMem);
        emit ProviderHardwareUpdated(msg.sender, hardware);
    }

    /// @notice Changes the caller's prices; running and assigned jobs keep their snapshotted rate.
    /// @param prices the new prices (perCpuMinute > 0)
    function updatePrices(Prices calldata prices) external {
        ProviderRecord storage p = _registered(msg.sender);
        if (prices.perCpuMinute == 0) revert ZeroCpuPrice();
        (p.perCpuMinute, p.perGpuMinute, p.perGbMinute) = (prices.perCpuMinute, prices.perGpuMinute, prices.perGbMinute);
        emit ProviderPricesUpdated(msg.sender, prices);
    }

    /// @notice Sets (or, with a zero value, removes) labels of the caller.
    /// @param keys label names
    /// @param values encoded values, one per key
    function setLabels(string[] calldata keys, bytes32[] calldata values) external {
        _registered(msg.sender);
        _setLabels(keys, values);
    }

    /// @notice Stops new assignments to the caller; its current jobs go on.
    function pause() external {
        _setPaused(true);
    }

    /// @notice Takes new assignments again.
    function resume() external {
        _setPaused(false);
    }

    // ------------------------------------------------------------------ admin actions

    /// @notice Approves a registered provider (also lifts a ban).
    /// @param provider the provider's account
    function approveProvider(address provider) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _registered(provider).status = ProviderStatus.APPROVED;
        emit ProviderStatusChanged(provider, ProviderStatus.APPROVED);
    }

    /// @notice Bans a provider: no new assignments, no claims; jobs it already runs can still be reported.
    /// @param provider the provider's account
    function banProvider(address provider) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _registered(provider).status = ProviderStatus.BANNED;
        emit ProviderStatusChanged(provider, ProviderStatus.BANNED);
    }

    /// @notice Removes a provider that holds no job; it may register again later.
    /// @param provider the provider's account
    function removeProvider(address provider) external onlyRole(DEFAULT_ADMIN_ROLE) {
        ProviderRecord storage p = _registered(provider);
        if (p.freeCpus != p.cpus || p.freeGpus != p.gpus || p.freeMemMB != p.memMB) revert ProviderBusy(provider);
        p.status = ProviderStatus.REMOVED;
        emit ProviderStatusChanged(provider, ProviderStatus.REMOVED);
    }

    // ------------------------------------------------------------------ views

    /// @notice A provider's registration, hardware, free capacity and prices.
    /// @param provider the provider's account
    function getProvider(address provider) external view returns (ProviderView memory) {
        ProviderRecord storage p = _providers[provider];
        return ProviderView({
            addr: provider,
            id: p.id,
            status: p.status,
            paused: p.paused,
            total: Hardware(p.cpus, p.gpus, p.memMB),
            free: Hardware(p.freeCpus, p.freeGpus, p.freeMemMB),
            prices: Prices(p.perCpuMinute, p.perGpuMinute, p.perGbMinute)
        });
    }

    /// @notice The account of provider number `id` (1-based), or zero.
    /// @param id the provider's id
    function providerAt(uint32 id) external view returns (address) {
        return _providerAt[id];
    }

    /// @notice How many accounts ever registered as providers.
    function providerCount() external view returns (uint32) {
        return _providerCount;
    }

    /// @notice The encoded value of a provider's label (zero when absent).
    /// @param provider the provider's account
    /// @param key keccak256 of the label name
    function labelOf(address provider, bytes32 key) external view returns (bytes32) {
        return _labels[provider][_providers[provider].labelEpoch][key];
    }

    /// @notice The credit units per minute that `provider` charges now for the given resources.
    /// @param provider the provider's account
    /// @param cpus CPU cores
    /// @param gpus GPUs
    /// @param memMB memory in MB
    function quote(address provider, uint16 cpus, uint8 gpus, uint32 memMB) external view returns (uint256) {
        return _rate(_providers[provider], cpus, gpus, memMB);
    }

    // ------------------------------------------------------------------ internals for the market

    /// @dev Reserves capacity on an approved, active provider and returns its current rate for it.
    function _reserve(address provider, uint16 cpus, uint8 gpus, uint32 memMB) internal returns (uint256 rate) {
        ProviderRecord storage p = _providers[provider];
        if (p.status != ProviderStatus.APPROVED) revert ProviderNotApproved(provider);
        if (p.paused) revert ProviderIsPaused(provider);
        (uint32 freeCpus, uint16 freeGpus, uint32 freeMem) = (p.freeCpus, p.freeGpus, p.freeMemMB);
        if (cpus > freeCpus || gpus > freeGpus || memMB > freeMem) {
            revert InsufficientCapacity(provider, Hardware(cpus, gpus, memMB), Hardware(freeCpus, freeGpus, freeMem));
        }
        unchecked {
            (p.freeCpus, p.freeGpus, p.freeMemMB) = (freeCpus - cpus, freeGpus - gpus, freeMem - memMB);
        }
        return _rate(p, cpus, gpus, memMB);
    }

    /// @dev Gives back capacity a job held on `provider`. Never exceeds the declared totals (hardware
    ///      can only shrink down to what is in use, so the sum stays within bounds).
    function _release(address provider, uint16 cpus, uint8 gpus, uint32 memMB) internal {
        ProviderRecord storage p = _providers[provider];
        (p.freeCpus, p.freeGpus, p.freeMemMB) = (p.freeCpus + cpus, p.freeGpus + gpus, p.freeMemMB + memMB);
    }

    /// @dev Reverts unless every constraint holds for `provider`'s labels.
    function _checkLabels(uint256 jobId, address provider, LabelConstraint[] calldata constraints) internal view {
        mapping(bytes32 => bytes32) storage labels = _labels[provider][_providers[provider].labelEpoch];
        for (uint256 i; i < constraints.length; ) {
            LabelConstraint calldata c = constraints[i];
            bytes32 have = labels[c.key];
            bytes32 want = c.value;
            LabelOp op = c.op;
            bool ok = false;
            if (op == LabelOp.EQ) ok = have == want;
            else if (op == LabelOp.NE) ok = have != want;
            else if (_isNumber(have) && _isNumber(want)) {
                uint256 h = uint256(have);
                uint256 w = uint256(want);
                if (op == LabelOp.LT) ok = h < w;
                else if (op == LabelOp.LE) ok = h <= w;
                else if (op == LabelOp.GT) ok = h > w;
                else ok = h >= w;
            }
            if (!ok) revert LabelMismatch(jobId, c.key);
            unchecked {
                ++i;
            }
        }
    }

    function _rate(ProviderRecord storage p, uint256 cpus, uint256 gpus, uint256 memMB) internal view returns (uint256) {
        return cpus * p.perCpuMinute + gpus * p.perGpuMinute + (memMB * p.perGbMinute) / 1024;
    }

    function _registered(address provider) internal view returns (ProviderRecord storage p) {
        p = _providers[provider];
        if (p.status == ProviderStatus.NONE || p.status == ProviderStatus.REMOVED) revert ProviderNotRegistered(provider);
    }

    function _providerId(address provider) internal view returns (uint32) {
        return _providers[provider].id;
    }

    // ------------------------------------------------------------------ private helpers

    function _setPaused(bool paused) private {
        ProviderRecord storage p = _registered(msg.sender);
        p.paused = paused;
        emit ProviderPaused(msg.sender, paused);
    }

    function _setLabels(string[] calldata keys, bytes32[] calldata values) private {
        if (keys.length != values.length) revert LengthMismatch(keys.length, values.length);
        if (keys.length > MAX_PROVIDER_LABELS) revert TooManyLabels(keys.length, MAX_PROVIDER_LABELS);
        mapping(bytes32 => bytes32) storage labels = _labels[msg.sender][_providers[msg.sender].labelEpoch];
        for (uint256 i; i < keys.length; ) {
            labels[keccak256(bytes(keys[i]))] = values[i];
            unchecked {
                ++i;
            }
        }
        emit ProviderLabelsSet(msg.sender, keys, values);
    }

    function _checkHardware(Hardware calldata hardware) private pure {
        if (hardware.cpus == 0 || hardware.memMB == 0) revert InvalidHardware();
    }

    function _isNumber(bytes32 word) private pure returns (bool) {
        return word != bytes32(0) && uint256(word) >> 248 == 0;
    }
}
