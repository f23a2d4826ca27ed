// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {GridStorage} from "./GridStorage.sol";
import {Hardware, JobStatus, JobView, Prices, ProviderStatus, ProviderView, ReleaseReason} from "./GridTypes.sol";

/// @title ProviderRegistry
/// @notice The cold half of the market: providers register their hardware, prices and labels; the
///         admin approves, bans or removes them and grants roles, behind a public delay where a
///         stolen key could redirect escrow indirectly; and the read-only views. It is deployed once
///         and reached only through `JobMarket`, which forwards every call it does not implement
///         here with DELEGATECALL: it runs on the market's storage, its events come from the market's
///         address, and callers see one contract. Called directly it only touches its own empty storage.
contract ProviderRegistry is GridStorage {
    /// @notice Most labels one `setLabels` call may write (bounds the loop).
    uint256 public constant MAX_PROVIDER_LABELS = 32;

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
    /// @notice The claim timeout changed.
    event ClaimTimeoutChanged(uint64 claimTimeout);
    /// @notice The delay of admin actions changed.
    event AdminDelayChanged(uint64 adminDelay);
    /// @notice A delayed admin action was scheduled: the admin may run it (the same call again) from
    ///         `readyAt`. `action` is the function selector, `args` its ABI-encoded arguments. Watchdogs
    ///         alert on this event.
    event AdminActionScheduled(bytes32 indexed operation, bytes4 indexed action, bytes args, uint256 readyAt);
    /// @notice The admin dropped a scheduled action before it ran.
    event AdminActionCancelled(bytes32 indexed operation);

    /// @notice The account is already registered.
    error ProviderAlreadyRegistered(address provider);
    /// @notice The account is not a registered provider.
    error ProviderNotRegistered(address provider);
    /// @notice Hardware declarations need at least one CPU and some memory.
    error InvalidHardware();
    /// @notice The price per CPU-minute must be positive, so every job has a positive rate.
    error ZeroCpuPrice();
    /// @notice The new hardware is smaller than what running and assigned jobs hold.
    error CapacityInUse(address provider, Hardware inUse);
    /// @notice The provider still holds jobs' capacity.
    error ProviderBusy(address provider);
    /// @notice Too many labels in one call.
    error TooManyLabels(uint256 count, uint256 max);
    /// @notice A label value is neither a number word (2**240 + n) nor left-aligned text that is not a
    ///         number (numbers have one encoding, so on-chain and off-chain comparisons agree).
    error MalformedLabelValue(bytes32 key, bytes32 value);
    /// @notice The label key is reserved ("@provider" is the job's placement, not a provider label).
    error ReservedLabel(bytes32 key);
    /// @notice The scheduled admin action may not run before `readyAt`.
    error AdminActionNotReady(bytes32 operation, uint256 readyAt);
    /// @notice No such admin action is scheduled.
    error AdminActionNotScheduled(bytes32 operation);
    /// @notice `renounceRole` must name the caller.
    error AccessControlBadConfirmation();
    /// @notice The claim window of this job has not passed yet.
    error ClaimNotExpired(uint256 jobId, uint256 expiresAt);
    /// @notice The job's provider is not banned.
    error ProviderNotBanned(uint256 jobId, address provider);

    // ------------------------------------------------------------------ provider actions

    /// @notice Registers the caller as a provider, pending the admin's approval.
    /// @param hardware cpus, gpus, memory (MB), scratch disk and persistent storage (GB) offered
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
            labelEpoch: epoch,
            diskGB: hardware.diskGB,
            freeDiskGB: hardware.diskGB,
            persistentGB: hardware.persistentGB
        });
        emit ProviderRegistered(msg.sender, id, hardware, prices);
        if (keys.length != 0 || values.length != 0) _setLabels(keys, values);
    }

    /// @notice Changes the caller's declared hardware; cannot go below what its jobs hold.
    /// @param hardware the new totals
    function updateHardware(Hardware calldata hardware) external {
        ProviderRecord storage p = _registered(msg.sender);
        _checkHardware(hardware);
        Hardware memory used = Hardware(
            p.cpus - p.freeCpus, p.gpus - p.freeGpus, p.memMB - p.freeMemMB, p.diskGB - p.freeDiskGB, 0
        );
        if (
            hardware.cpus < used.cpus || hardware.gpus < used.gpus || hardware.memMB < used.memMB
                || hardware.diskGB < used.diskGB
        ) revert CapacityInUse(msg.sender, used);
        (p.cpus, p.gpus, p.memMB) = (hardware.cpus, hardware.gpus, hardware.memMB);
        (p.freeCpus, p.freeGpus, p.freeMemMB) =
            (hardware.cpus - used.cpus, hardware.gpus - used.gpus, hardware.memMB - used.memMB);
        (p.diskGB, p.freeDiskGB, p.persistentGB) =
            (hardware.diskGB, hardware.diskGB - used.diskGB, hardware.persistentGB);
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

    /// @notice Sets (or, with a zero value, removes) labels of the caller. A number is accepted only in
    ///         the number encoding; a malformed value reverts with `MalformedLabelValue`.
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

    // ------------------------------------------------------------------ anyone

    /// @notice Sends a META_SCHEDULED job whose claim window passed back to PENDING. Anyone may call.
    /// @param jobId the job
    function timeoutClaim(uint256 jobId) external {
        Job storage job = _existing(jobId);
        if (job.status != JobStatus.META_SCHEDULED) revert InvalidStatus(jobId, job.status);
        uint256 expiresAt = uint256(job.since) + _claimTimeout;
        if (block.timestamp < expiresAt) revert ClaimNotExpired(jobId, expiresAt);
        _backToPending(jobId, job, ReleaseReason.CLAIM_TIMEOUT, address(0));
    }

    /// @notice Sends a META_SCHEDULED or SCHEDULED job of a banned provider back to PENDING. Anyone may call.
    /// @param jobId the job
    function releaseFromBanned(uint256 jobId) external {
        Job storage job = _existing(jobId);
        JobStatus status = job.status;
        if (status != JobStatus.META_SCHEDULED && status != JobStatus.SCHEDULED) revert InvalidStatus(jobId, status);
        address provider = _providerAt[job.providerId];
        if (_providers[provider].status != ProviderStatus.BANNED) revert ProviderNotBanned(jobId, provider);
        _backToPending(jobId, job, ReleaseReason.PROVIDER_BANNED, provider);
    }

    // ------------------------------------------------------------------ admin actions

    /// @notice Approves a registered provider (also lifts a ban). Delayed: the first call schedules
    ///         it (`AdminActionScheduled`), the same call after `adminDelay` seconds runs it; with a
    ///         zero delay it runs at once. The provider gets no job before it has run.
    /// @param provider the provider's account
    function approveProvider(address provider) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (!_delayed(abi.encode(provider))) return;
        _registered(provider).status = ProviderStatus.APPROVED;
        emit ProviderStatusChanged(provider, ProviderStatus.APPROVED);
    }

    /// @notice Bans a provider at once: no new assignments, claims or starts; its assigned jobs can be
    ///         sent back to PENDING by anyone (`releaseFromBanned`); jobs it runs can still be reported.
    /// @param provider the provider's account
    function banProvider(address provider) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _registered(provider).status = ProviderStatus.BANNED;
        emit ProviderStatusChanged(provider, ProviderStatus.BANNED);
    }

    /// @notice Removes a provider that holds no job; it may register again later.
    /// @param provider the provider's account
    function removeProvider(address provider) external onlyRole(DEFAULT_ADMIN_ROLE) {
        ProviderRecord storage p = _registered(provider);
        if (p.freeCpus != p.cpus || p.freeGpus != p.gpus || p.freeMemMB != p.memMB || p.freeDiskGB != p.diskGB) {
            revert ProviderBusy(provider);
        }
        p.status = ProviderStatus.REMOVED;
        emit ProviderStatusChanged(provider, ProviderStatus.REMOVED);
    }

    /// @notice Grants `role` to `account`. Delayed like `approveProvider`.
    /// @param role the role
    /// @param account the account
    function grantRole(bytes32 role, address account) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (_delayed(abi.encode(role, account))) _grant(role, account);
    }

    /// @notice Revokes `role` from `account`. Delayed like `approveProvider`.
    /// @param role the role
    /// @param account the account
    function revokeRole(bytes32 role, address account) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (_delayed(abi.encode(role, account))) _revoke(role, account);
    }

    /// @notice Gives up a role of the caller's, at once.
    /// @param role the role
    /// @param callerConfirmation the caller's address
    function renounceRole(bytes32 role, address callerConfirmation) external {
        if (callerConfirmation != msg.sender) revert AccessControlBadConfirmation();
        _revoke(role, msg.sender);
    }

    /// @notice Sets the claim timeout for future checks. Delayed like `approveProvider`.
    /// @param seconds_ the new timeout in seconds
    function setClaimTimeout(uint64 seconds_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (!_delayed(abi.encode(seconds_))) return;
        _claimTimeout = seconds_;
        emit ClaimTimeoutChanged(seconds_);
    }

    /// @notice Sets the delay of admin actions. Delayed by the current delay.
    /// @param seconds_ the new delay in seconds
    function setAdminDelay(uint64 seconds_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (!_delayed(abi.encode(seconds_))) return;
        _adminDelay = seconds_;
        emit AdminDelayChanged(seconds_);
    }

    /// @notice Drops a scheduled admin action (for example one a stolen key scheduled). Immediate.
    /// @param operation the id from `AdminActionScheduled`
    function cancelAdminAction(bytes32 operation) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (_scheduled[operation] == 0) revert AdminActionNotScheduled(operation);
        delete _scheduled[operation];
        emit AdminActionCancelled(operation);
    }

    // ------------------------------------------------------------------ views

    /// @notice Whether `account` holds `role`.
    /// @param role the role
    /// @param account the account
    function hasRole(bytes32 role, address account) external view returns (bool) {
        return _roles[role][account];
    }

    /// @notice The role that administers `role` (always DEFAULT_ADMIN_ROLE).
    function getRoleAdmin(bytes32) external pure returns (bytes32) {
        return DEFAULT_ADMIN_ROLE;
    }

    /// @notice Seconds an assigned provider has to claim before anyone may send the job back to PENDING.
    function claimTimeout() external view returns (uint64) {
        return _claimTimeout;
    }

    /// @notice Seconds between scheduling a delayed admin action and running it.
    function adminDelay() external view returns (uint64) {
        return _adminDelay;
    }

    /// @notice When a scheduled admin action may run (0: not scheduled).
    /// @param operation keccak256(abi.encode(selector, abi.encode(args)))
    function scheduledAt(bytes32 operation) external view returns (uint256) {
        return _scheduled[operation];
    }

    /// @notice A provider's registration, hardware, free capacity and prices.
    /// @param provider the provider's account
    function getProvider(address provider) external view returns (ProviderView memory) {
        ProviderRecord storage p = _providers[provider];
        return ProviderView({
            addr: provider,
            id: p.id,
            status: p.status,
            paused: p.paused,
            total: Hardware(p.cpus, p.gpus, p.memMB, p.diskGB, p.persistentGB),
            free: Hardware(p.freeCpus, p.freeGpus, p.freeMemMB, p.freeDiskGB, p.persistentGB),
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

    /// @notice A job's full record (the workflow and its hash are in its array's `JobSubmitted` event,
    ///         indexed by `headId`).
    /// @param jobId the job
    function getJob(uint256 jobId) public view returns (JobView memory v) {
        Job storage job = _existing(jobId);
        uint256 head = jobId - job.headOffset;
        v = JobView({
            id: jobId,
            owner: job.owner,
            status: job.status,
            provider: _providerAt[job.providerId],
            escrow: job.status >= JobStatus.FINISHED ? 0 : job.escrow,
            rate: job.rate,
            since: job.since,
            maxRate: job.maxRate,
            cpus: job.cpus,
            gpus: job.gpus,
            memMB: job.memMB,
            diskGB: job.diskGB,
            labelsHash: job.flags & _HAS_LABELS != 0 ? _labelsHash[head] : bytes32(0),
            headId: head
        });
    }

    /// @notice Up to `count` jobs from `fromId` (bounded by existing ids; at most 500).
    /// @param fromId first job id
    /// @param count how many
    function getJobs(uint256 fromId, uint256 count) external view returns (JobView[] memory views) {
        if (fromId == 0) fromId = 1;
        uint256 end = fromId + (count > 500 ? 500 : count);
        uint256 next = _nextJobId;
        if (end > next) end = next;
        uint256 n = end > fromId ? end - fromId : 0;
        views = new JobView[](n);
        for (uint256 i; i < n; ++i) views[i] = getJob(fromId + i);
    }

    /// @notice Number of jobs ever submitted (ids run from 1 to this).
    function jobCount() external view returns (uint256) {
        return _nextJobId - 1;
    }

    /// @notice An account's internal balance: refunds and earnings not yet withdrawn.
    /// @param account the account
    function balanceOf(address account) external view returns (uint256) {
        return _balances[account] & ~_TOUCHED;
    }

    /// @notice Credits the market owes: the sum of escrows of non-final jobs and of internal balances.
    function owed() external view returns (uint256) {
        return _owed;
    }

    /// @notice Credit units a RUNNING job has used so far (capped by its escrow); 0 otherwise.
    /// @param jobId the job
    function billSoFar(uint256 jobId) external view returns (uint256) {
        Job storage job = _existing(jobId);
        return job.status == JobStatus.RUNNING ? _billUntil(job, block.timestamp) : 0;
    }

    // ------------------------------------------------------------------ private helpers

    /// @dev True when the calling admin action may run now. With a delay, the first call schedules it
    ///      and returns false; the same call (same selector and arguments) from `readyAt` returns true.
    function _delayed(bytes memory args) private returns (bool) {
        uint256 delay = _adminDelay;
        if (delay == 0) return true;
        bytes32 op = keccak256(abi.encode(msg.sig, args));
        uint256 readyAt = _scheduled[op];
        if (readyAt > 0) {
            if (block.timestamp < readyAt) revert AdminActionNotReady(op, readyAt);
            delete _scheduled[op];
            return true;
        }
        readyAt = block.timestamp + delay;
        _scheduled[op] = readyAt;
        emit AdminActionScheduled(op, msg.sig, args, readyAt);
        return false;
    }

    function _registered(address provider) private view returns (ProviderRecord storage p) {
        p = _providers[provider];
        if (p.status == ProviderStatus.NONE || p.status == ProviderStatus.REMOVED) revert ProviderNotRegistered(provider);
    }

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
            bytes32 key = keccak256(bytes(keys[i]));
            bytes32 value = values[i];
            _checkLabelValue(key, value);
            labels[key] = value;
            unchecked {
                ++i;
            }
        }
        emit ProviderLabelsSet(msg.sender, keys, values);
    }

    /// @dev A value is the zero word (remove), a number word (top 16 bits 0x0001), or text: left-aligned
    ///      bytes (no zero byte before a non-zero one) that are not all decimal digits.
    function _checkLabelValue(bytes32 key, bytes32 value) private pure {
        if (key == _PROVIDER_KEY) revert ReservedLabel(key);
        if (value == bytes32(0)) return;
        if (uint256(value) >> 248 == 0) {
            if (uint256(value) >> 240 != 1) revert MalformedLabelValue(key, value);
            return;
        }
        bool digitsOnly = true;
        bool ended = false;
        for (uint256 i; i < 32; ++i) {
            uint8 b = uint8(value[i]);
            if (b == 0) {
                ended = true;
            } else {
                if (ended) revert MalformedLabelValue(key, value);
                if (b < 0x30 || b > 0x39) digitsOnly = false;
            }
        }
        if (digitsOnly) revert MalformedLabelValue(key, value);
    }

    function _checkHardware(Hardware calldata hardware) private pure {
        if (hardware.cpus == 0 || hardware.memMB == 0) revert InvalidHardware();
    }
}
