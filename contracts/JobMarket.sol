// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {GridStorage} from "./GridStorage.sol";
import {
    Hardware,
    JobRequest,
    JobStatus,
    LabelConstraint,
    LabelOp,
    PermitSig,
    ProviderStatus,
    ReleaseReason,
    Report,
    ReportAction
} from "./GridTypes.sol";

/// @title JobMarket
/// @notice Holds job requests and their escrowed credits, takes the meta-scheduler's assignments,
///         the providers' reports and the owners' cancels and top-ups, and settles every bill on
///         chain time. Every call it does not implement (provider registration, admin actions,
///         views) runs `ProviderRegistry`'s code on this contract's storage (DELEGATECALL from the
///         fallback): one address, one ABI (the SDK's `JobMarket` ABI holds both halves).
///         Credits are conserved: the market's token balance is at least the sum of escrows plus
///         internal balances (`owed`), which their holders withdraw (pull payments); only credits
///         above that, sent by mistake, can be swept by the admin. No role can move an owner's escrow
///         to anyone but the owner or, for work done, the provider that did it.
///         Batches apply entry by entry: an entry that no longer fits is skipped with `EntrySkipped`
///         (the job and the reason, as the revert data the single call would give) and the rest lands.
contract JobMarket is GridStorage, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice Largest workflow accepted, in bytes (it travels in calldata and the event).
    uint256 public constant MAX_WORKFLOW_BYTES = 16_384;
    /// @notice Most label constraints (placement entries included) one job may carry.
    uint256 public constant MAX_JOB_LABELS = 16;
    /// @notice Most jobs in one job array.
    uint256 public constant MAX_ARRAY_JOBS = 500; // ~47k gas per array job: 500 fit a 30M-gas block

    /// @notice The credit token escrowed and paid out.
    IERC20 public immutable token;
    /// @notice The `ProviderRegistry` whose code runs for every call this contract does not implement.
    address public immutable registry;

    /// @notice Jobs `firstJobId` .. `firstJobId + count - 1` were submitted with the same request and
    ///         workflow. The workflow hash lives here only (not in storage).
    event JobSubmitted(
        uint256 indexed firstJobId,
        address indexed owner,
        uint256 count,
        JobRequest request,
        LabelConstraint[] labels,
        bytes32 workflowHash,
        bytes workflow
    );
    /// @notice The scheduler assigned a job to a provider at `rate` credit units per minute.
    event JobAssigned(uint256 indexed jobId, address indexed provider, uint56 rate);
    /// @notice A job moved to SCHEDULED (claimed) or RUNNING (started).
    event JobStatusChanged(uint256 indexed jobId, address indexed provider, JobStatus status);
    /// @notice A job reached a final status; `billed` went to the provider, `refunded` to the owner.
    event JobSettled(
        uint256 indexed jobId,
        address indexed owner,
        address indexed provider,
        JobStatus status,
        int32 exitCode,
        uint64 billed,
        uint64 refunded
    );
    /// @notice Escrow was added to a job; `provider` is zero unless the job is assigned.
    event JobToppedUp(uint256 indexed jobId, address indexed provider, address payer, uint64 amount, uint64 escrow);
    /// @notice An entry of `assignBatch` (provider: the target) or `report` (provider: the reporter) was
    ///         skipped; `reason` is the revert data (custom error) the single call would have given.
    event EntrySkipped(uint256 indexed jobId, address indexed provider, bytes reason);
    /// @notice An account withdrew its internal balance.
    event Withdrawn(address indexed account, uint256 amount);
    /// @notice The admin sent credits held above what the market owes (sent to it by mistake) to `to`.
    event Swept(address indexed to, uint256 amount);

    /// @notice Only the job's owner may do this.
    error NotJobOwner(uint256 jobId, address caller);
    /// @notice Only the provider the job is assigned to may do this.
    error NotAssignedProvider(uint256 jobId, address caller);
    /// @notice The caller may not panic this job.
    error NotAllowedToPanic(uint256 jobId, address caller);
    /// @notice A job needs at least one CPU and some memory.
    error InvalidResources();
    /// @notice The price cap must be positive.
    error ZeroPriceCap();
    /// @notice The escrow (or top-up) must be positive.
    error ZeroCredits();
    /// @notice The workflow is empty.
    error EmptyWorkflow();
    /// @notice The workflow exceeds MAX_WORKFLOW_BYTES.
    error WorkflowTooLarge(uint256 size, uint256 max);
    /// @notice A job array needs between 1 and MAX_ARRAY_JOBS jobs.
    error InvalidArrayCount(uint256 count, uint256 max);
    /// @notice More than MAX_JOB_LABELS constraints.
    error TooManyJobLabels(uint256 count, uint256 max);
    /// @notice The constraints given at assignment are not the ones submitted with the job.
    error LabelsMismatch(uint256 jobId);
    /// @notice The provider's rate for this job exceeds the job's price cap.
    error PriceAboveCap(uint256 jobId, uint256 rate, uint256 maxRate);
    /// @notice The job's escrow still pays for more time.
    error EscrowNotExhausted(uint256 jobId, uint256 billedSoFar, uint256 escrow);
    /// @notice The RUNNING job's escrow is used up: report it OUT_OF_CREDITS; a top-up cannot pay for
    ///         time that already ran unfunded.
    error EscrowExhausted(uint256 jobId);
    /// @notice The escrow would exceed 64 bits.
    error EscrowOverflow(uint256 jobId);
    /// @notice The permit's deadline has passed.
    error PermitExpired(uint256 deadline);
    /// @notice The caller has no balance to withdraw.
    error NothingToWithdraw(address account);
    /// @notice The market holds no credits above what it owes.
    error NothingToSweep();

    /// @param credits the credit token
    /// @param admin receives DEFAULT_ADMIN_ROLE
    /// @param initialClaimTimeout seconds a provider has to claim an assignment
    /// @param initialAdminDelay seconds between scheduling and running a delayed admin action (0 on a devnet)
    /// @param registry_ the deployed ProviderRegistry (its code only: its own storage is never used)
    constructor(
        IERC20 credits,
        address admin,
        uint64 initialClaimTimeout,
        uint64 initialAdminDelay,
        address registry_
    ) {
        token = credits;
        registry = registry_;
        _claimTimeout = initialClaimTimeout;
        _adminDelay = initialAdminDelay;
        _nextJobId = 1;
        _grant(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @notice Runs `ProviderRegistry`'s code for every other function, on this contract's storage.
    fallback() external {
        address target = registry;
        assembly {
            calldatacopy(0, 0, calldatasize())
            let ok := delegatecall(gas(), target, 0, calldatasize(), 0, 0)
            returndatacopy(0, 0, returndatasize())
            if iszero(ok) { revert(0, returndatasize()) }
            return(0, returndatasize())
        }
    }

    // ================================================================== owners

    /// @notice Submits `count` identical jobs (a job array; 1 for a single job), locking
    ///         `request.credits` per job. Credits come from the caller's internal balance first,
    ///         then from the token (approve the market first, or use `submitWithPermit`).
    /// @param request resources, price cap, escrow per job and an external reference
    /// @param labels constraints on the provider's labels and the job's placement, checked at assignment
    /// @param workflow the workflow bytes; only the event carries them and their hash
    /// @param count number of jobs in the array
    /// @return firstJobId id of the first job; the others follow consecutively
    function submit(
        JobRequest calldata request,
        LabelConstraint[] calldata labels,
        bytes calldata workflow,
        uint256 count
    ) external nonReentrant returns (uint256 firstJobId) {
        firstJobId = _submit(request, labels, workflow, count, 0);
    }

    /// @notice Same as `submit`, paying through an EIP-2612 permit signed for this market, in one
    ///         transaction: `permit.value` (at most the total) in tokens, the rest from the internal balance.
    /// @param request resources, price cap, escrow per job and an external reference
    /// @param labels constraints on the provider's labels and placement
    /// @param workflow the workflow bytes
    /// @param count number of jobs in the array
    /// @param permit the owner's permit (value >= what the internal balance does not cover)
    /// @return firstJobId id of the first job
    function submitWithPermit(
        JobRequest calldata request,
        LabelConstraint[] calldata labels,
        bytes calldata workflow,
        uint256 count,
        PermitSig calldata permit
    ) external nonReentrant returns (uint256 firstJobId) {
        _permit(permit);
        firstJobId = _submit(request, labels, workflow, count, permit.value);
    }

    /// @notice Adds escrow to a non-final job, extending how long it may run. Anyone may pay. A RUNNING
    ///         job whose escrow is used up reverts with `EscrowExhausted`.
    /// @param jobId the job
    /// @param amount credit units to add
    function topUp(uint256 jobId, uint64 amount) external nonReentrant {
        _topUp(jobId, amount, 0);
    }

    /// @notice Same as `topUp`, paying through an EIP-2612 permit.
    /// @param jobId the job
    /// @param amount credit units to add
    /// @param permit the payer's permit
    function topUpWithPermit(uint256 jobId, uint64 amount, PermitSig calldata permit) external nonReentrant {
        _permit(permit);
        _topUp(jobId, amount, permit.value);
    }

    /// @notice Cancels the caller's job: full refund before it runs, billed up to now while RUNNING.
    /// @param jobId the job
    function cancel(uint256 jobId) external {
        Job storage job = _existing(jobId);
        if (job.owner != msg.sender) revert NotJobOwner(jobId, msg.sender);
        JobStatus status = job.status;
        if (status >= JobStatus.FINISHED) revert InvalidStatus(jobId, status);
        uint256 bill = status == JobStatus.RUNNING ? _billUntil(job, block.timestamp) : 0;
        _settle(jobId, job, JobStatus.CANCELED, 0, bill, address(0));
    }

    /// @notice Withdraws the caller's whole internal balance (refunds and earnings) as tokens.
    function withdraw() external nonReentrant {
        uint256 amount = _balances[msg.sender] & ~_TOUCHED;
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        _balances[msg.sender] = _TOUCHED;
        _owed -= uint192(amount);
        emit Withdrawn(msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    // ================================================================== scheduler

    /// @notice Assigns one PENDING job to a provider (PENDING → META_SCHEDULED).
    /// @param jobId the job
    /// @param provider an approved, active provider with the job's resources free, allowed by its placement
    /// @param labels the job's label constraints exactly as submitted (empty if none)
    function assign(uint256 jobId, address provider, LabelConstraint[] calldata labels)
        external
        onlyRole(SCHEDULER_ROLE)
    {
        _check(_assign(jobId, provider, labels));
    }

    /// @notice Assigns many jobs in one transaction, with the same checks per job as `assign`; an
    ///         entry that fails them is skipped (`EntrySkipped`) and the others land.
    /// @param jobIds the jobs
    /// @param providers the provider of each job
    /// @param labels the label constraints of each job (empty arrays for jobs without)
    function assignBatch(
        uint256[] calldata jobIds,
        address[] calldata providers,
        LabelConstraint[][] calldata labels
    ) external onlyRole(SCHEDULER_ROLE) {
        uint256 n = jobIds.length;
        if (providers.length != n) revert LengthMismatch(n, providers.length);
        if (labels.length != n) revert LengthMismatch(n, labels.length);
        for (uint256 i; i < n; ) {
            bytes memory err = _assign(jobIds[i], providers[i], labels[i]);
            if (err.length != 0) emit EntrySkipped(jobIds[i], providers[i], err);
            unchecked {
                ++i;
            }
        }
    }

    /// @notice Ends a non-final job as PANICKED (a provider-side fault): the whole escrow goes back
    ///         to the owner. Callable by the scheduler, the admin, or the job's assigned provider.
    /// @param jobId the job
    function panic(uint256 jobId) external {
        Job storage job = _existing(jobId);
        uint32 pid = job.providerId;
        bool allowed = _roles[SCHEDULER_ROLE][msg.sender] || _roles[DEFAULT_ADMIN_ROLE][msg.sender]
            || (pid != 0 && _providers[msg.sender].id == pid);
        if (!allowed) revert NotAllowedToPanic(jobId, msg.sender);
        _check(_panic(jobId, job, address(0)));
    }

    /// @notice Sends the credits the market holds above what it owes (escrows + internal balances),
    ///         e.g. tokens transferred to it by mistake, to `to`. Never touches an escrow or a balance.
    /// @param to the receiver
    function sweep(address to) external onlyRole(DEFAULT_ADMIN_ROLE) nonReentrant {
        uint256 surplus = token.balanceOf(address(this)) - _owed;
        if (surplus < 1) revert NothingToSweep();
        emit Swept(to, surplus);
        token.safeTransfer(to, surplus);
    }

    // ================================================================== providers

    /// @notice Accepts an assignment (META_SCHEDULED → SCHEDULED); the provider must be approved.
    /// @param jobId the job
    function claim(uint256 jobId) external {
        (uint32 pid, bool approved) = _reporter();
        _check(_claim(jobId, pid, approved));
    }

    /// @notice Refuses an assignment (META_SCHEDULED/SCHEDULED → PENDING); the job can be matched again.
    /// @param jobId the job
    function refuse(uint256 jobId) external {
        (uint32 pid, ) = _reporter();
        _check(_refuse(jobId, pid));
    }

    /// @notice Reports that the job's work started (SCHEDULED → RUNNING); billing starts now. A banned
    ///         provider cannot start a job.
    /// @param jobId the job
    function start(uint256 jobId) external {
        (uint32 pid, bool approved) = _reporter();
        _check(_start(jobId, pid, approved));
    }

    /// @notice Reports the end of a RUNNING job now: exit code 0 → FINISHED, other → FAILED.
    ///         Bill = rate × elapsed chain time, capped by the escrow; the rest is refunded.
    /// @param jobId the job
    /// @param exitCode the job's exit code
    function finish(uint256 jobId, int32 exitCode) external {
        (uint32 pid, ) = _reporter();
        _check(_finish(jobId, pid, exitCode, 0));
    }

    /// @notice Ends a RUNNING job whose escrow is used up (OUT_OF_CREDITS, whole escrow billed). Anyone may call.
    /// @param jobId the job
    function reportOutOfCredits(uint256 jobId) external {
        _check(_outOfCredits(jobId, _existing(jobId), address(0)));
    }

    /// @notice Applies many reports of the caller's jobs in one transaction, with the same checks
    ///         per job as the single calls; an entry that fails them is skipped (`EntrySkipped`).
    /// @param reports one entry per job: action, for FINISH the exit code and the end time seen
    function report(Report[] calldata reports) external {
        (uint32 pid, bool approved) = _reporter();
        uint256 n = reports.length;
        for (uint256 i; i < n; ) {
            Report calldata r = reports[i];
            ReportAction action = r.action;
            uint256 jobId = r.jobId;
            bytes memory err;
            if (action == ReportAction.CLAIM) err = _claim(jobId, pid, approved);
            else if (action == ReportAction.START) err = _start(jobId, pid, approved);
            else if (action == ReportAction.FINISH) err = _finish(jobId, pid, r.exitCode, r.endTime);
            else if (action == ReportAction.REFUSE) err = _refuse(jobId, pid);
            else {
                Job storage job;
                (job, err) = _assigned(jobId, pid);
                if (err.length == 0) {
                    err = action == ReportAction.OUT_OF_CREDITS
                        ? _outOfCredits(jobId, job, msg.sender)
                        : _panic(jobId, job, msg.sender);
                }
            }
            if (err.length != 0) emit EntrySkipped(jobId, msg.sender, err);
            unchecked {
                ++i;
            }
        }
    }

    // ================================================================== internals
    // Every step returns the revert data of its failure (empty on success): single calls revert with it,
    // batches emit it in EntrySkipped and go on.

    function _submit(
        JobRequest calldata request,
        LabelConstraint[] calldata labels,
        bytes calldata workflow,
        uint256 count,
        uint256 viaPermit
    ) private returns (uint256 firstJobId) {
        if (request.cpus == 0 || request.memMB == 0) revert InvalidResources();
        if (request.maxRate == 0) revert ZeroPriceCap();
        if (request.credits == 0) revert ZeroCredits();
        if (workflow.length == 0) revert EmptyWorkflow();
        if (workflow.length > MAX_WORKFLOW_BYTES) revert WorkflowTooLarge(workflow.length, MAX_WORKFLOW_BYTES);
        if (count == 0 || count > MAX_ARRAY_JOBS) revert InvalidArrayCount(count, MAX_ARRAY_JOBS);
        if (labels.length > MAX_JOB_LABELS) revert TooManyJobLabels(labels.length, MAX_JOB_LABELS);

        uint256 pulled = _payment(uint256(request.credits) * count, viaPermit);
        firstJobId = _nextJobId;
        (_nextJobId, _owed) = (uint64(firstJobId + count), _owed + uint192(pulled));
        uint8 flags = labels.length != 0 ? _HAS_LABELS : 0;
        if (flags != 0) _labelsHash[firstJobId] = keccak256(abi.encode(labels));
        if (request.diskGB != 0) flags |= _HAS_DISK;
        for (uint256 i; i < count; ) {
            _jobs[firstJobId + i] = Job({
                owner: msg.sender,
                escrow: request.credits,
                headOffset: uint16(i),
                diskGB: request.diskGB,
                status: JobStatus.PENDING,
                flags: flags,
                providerId: 0,
                rate: 0,
                since: 0,
                maxRate: request.maxRate,
                cpus: request.cpus,
                gpus: request.gpus,
                memMB: request.memMB
            });
            unchecked {
                ++i;
            }
        }
        emit JobSubmitted(firstJobId, msg.sender, count, request, labels, keccak256(workflow), workflow);
        if (pulled != 0) token.safeTransferFrom(msg.sender, address(this), pulled);
    }

    function _assign(uint256 jobId, address provider, LabelConstraint[] calldata labels)
        private
        returns (bytes memory)
    {
        Job storage job = _jobs[jobId];
        JobStatus status = job.status;
        if (status != JobStatus.PENDING) {
            if (status == JobStatus.NONE) return abi.encodeWithSelector(JobNotFound.selector, jobId);
            return abi.encodeWithSelector(InvalidStatus.selector, jobId, status);
        }
        uint8 flags = job.flags;
        if (flags & _HAS_LABELS != 0) {
            if (keccak256(abi.encode(labels)) != _labelsHash[jobId - job.headOffset]) {
                return abi.encodeWithSelector(LabelsMismatch.selector, jobId);
            }
            bytes memory err = _checkLabels(jobId, provider, labels);
            if (err.length != 0) return err;
        } else if (labels.length != 0) {
            return abi.encodeWithSelector(LabelsMismatch.selector, jobId);
        }
        return _reserve(jobId, job, provider, flags);
    }

    /// @dev Reserves the job's resources on an approved, active provider within the job's price cap.
    function _reserve(uint256 jobId, Job storage job, address provider, uint8 flags) private returns (bytes memory) {
        ProviderRecord storage p = _providers[provider];
        if (p.status != ProviderStatus.APPROVED) return abi.encodeWithSelector(ProviderNotApproved.selector, provider);
        if (p.paused) return abi.encodeWithSelector(ProviderIsPaused.selector, provider);
        bool disk = flags & _HAS_DISK != 0;
        (uint32 cpus, uint16 gpus, uint32 mem) = (job.cpus, job.gpus, job.memMB);
        (uint32 freeCpus, uint16 freeGpus, uint32 freeMem) = (p.freeCpus, p.freeGpus, p.freeMemMB);
        if (cpus > freeCpus || gpus > freeGpus || mem > freeMem || (disk && job.diskGB > p.freeDiskGB)) {
            return _capacityError(provider, job, p, disk);
        }
        uint256 rate = _rate(p, cpus, gpus, mem);
        if (rate > job.maxRate) return abi.encodeWithSelector(PriceAboveCap.selector, jobId, rate, job.maxRate);
        unchecked {
            (p.freeCpus, p.freeGpus, p.freeMemMB) = (freeCpus - cpus, freeGpus - gpus, freeMem - mem);
            if (disk) p.freeDiskGB -= job.diskGB;
        }
        job.status = JobStatus.META_SCHEDULED;
        job.providerId = p.id;
        job.rate = uint56(rate); // rate <= maxRate < 2**56
        job.since = uint40(block.timestamp);
        emit JobAssigned(jobId, provider, uint56(rate));
        return "";
    }

    function _capacityError(address provider, Job storage job, ProviderRecord storage p, bool disk)
        private
        view
        returns (bytes memory)
    {
        return abi.encodeWithSelector(
            InsufficientCapacity.selector,
            provider,
            Hardware(job.cpus, job.gpus, job.memMB, disk ? job.diskGB : 0, 0),
            Hardware(p.freeCpus, p.freeGpus, p.freeMemMB, disk ? p.freeDiskGB : 0, 0)
        );
    }

    /// @dev Every constraint must hold for `provider`'s labels; the reserved "@provider" key places the
    ///      job: `==` entries list the allowed providers (any of them), `!=` entries excluded ones.
    function _checkLabels(uint256 jobId, address provider, LabelConstraint[] calldata constraints)
        private
        view
        returns (bytes memory)
    {
        mapping(bytes32 => bytes32) storage labels = _labels[provider][_providers[provider].labelEpoch];
        bytes32 self = bytes32(uint256(uint160(provider)));
        bool hasAllowList = false;
        bool allowed = false;
        for (uint256 i; i < constraints.length; ) {
            LabelConstraint calldata c = constraints[i];
            bytes32 want = c.value;
            LabelOp op = c.op;
            bool ok = false;
            if (c.key == _PROVIDER_KEY) {
                if (op == LabelOp.EQ) {
                    hasAllowList = true;
                    if (want == self) allowed = true;
                    ok = true;
                } else if (op == LabelOp.NE) {
                    if (want == self) return abi.encodeWithSelector(ProviderNotAllowed.selector, jobId, provider);
                    ok = true;
                }
            } else {
                bytes32 have = labels[c.key];
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
            }
            if (!ok) return abi.encodeWithSelector(LabelMismatch.selector, jobId, c.key);
            unchecked {
                ++i;
            }
        }
        if (hasAllowList && !allowed) return abi.encodeWithSelector(ProviderNotAllowed.selector, jobId, provider);
        return "";
    }

    function _claim(uint256 jobId, uint32 pid, bool approved) private returns (bytes memory) {
        (Job storage job, bytes memory err) = _assigned(jobId, pid);
        if (err.length != 0) return err;
        if (job.status != JobStatus.META_SCHEDULED) return _invalid(jobId, job.status);
        if (!approved) return abi.encodeWithSelector(ProviderNotApproved.selector, msg.sender);
        job.status = JobStatus.SCHEDULED;
        emit JobStatusChanged(jobId, msg.sender, JobStatus.SCHEDULED);
        return "";
    }

    function _refuse(uint256 jobId, uint32 pid) private returns (bytes memory) {
        (Job storage job, bytes memory err) = _assigned(jobId, pid);
        if (err.length != 0) return err;
        JobStatus status = job.status;
        if (status != JobStatus.META_SCHEDULED && status != JobStatus.SCHEDULED) return _invalid(jobId, status);
        _backToPending(jobId, job, ReleaseReason.REFUSED, msg.sender);
        return "";
    }

    function _start(uint256 jobId, uint32 pid, bool approved) private returns (bytes memory) {
        (Job storage job, bytes memory err) = _assigned(jobId, pid);
        if (err.length != 0) return err;
        if (job.status != JobStatus.SCHEDULED) return _invalid(jobId, job.status);
        if (!approved) return abi.encodeWithSelector(ProviderNotApproved.selector, msg.sender);
        job.status = JobStatus.RUNNING;
        job.since = uint40(block.timestamp);
        emit JobStatusChanged(jobId, msg.sender, JobStatus.RUNNING);
        return "";
    }

    /// @dev The bill runs to `endTime` (0: now), bounded by the start time and now.
    function _finish(uint256 jobId, uint32 pid, int32 exitCode, uint64 endTime) private returns (bytes memory) {
        (Job storage job, bytes memory err) = _assigned(jobId, pid);
        if (err.length != 0) return err;
        if (job.status != JobStatus.RUNNING) return _invalid(jobId, job.status);
        uint256 end = block.timestamp;
        if (endTime != 0 && endTime < end) {
            uint256 started = job.since;
            end = endTime < started ? started : endTime;
        }
        JobStatus status = exitCode == 0 ? JobStatus.FINISHED : JobStatus.FAILED;
        _settle(jobId, job, status, exitCode, _billUntil(job, end), msg.sender);
        return "";
    }

    function _outOfCredits(uint256 jobId, Job storage job, address caller) private returns (bytes memory) {
        if (job.status != JobStatus.RUNNING) return _invalid(jobId, job.status);
        uint256 used = _billUntil(job, block.timestamp);
        uint256 escrow = job.escrow;
        if (used < escrow) return abi.encodeWithSelector(EscrowNotExhausted.selector, jobId, used, escrow);
        _settle(jobId, job, JobStatus.OUT_OF_CREDITS, 0, used, caller);
        return "";
    }

    function _panic(uint256 jobId, Job storage job, address caller) private returns (bytes memory) {
        JobStatus status = job.status;
        if (status >= JobStatus.FINISHED) return _invalid(jobId, status);
        _settle(jobId, job, JobStatus.PANICKED, 0, 0, caller);
        return "";
    }

    function _topUp(uint256 jobId, uint64 amount, uint256 viaPermit) private {
        if (amount == 0) revert ZeroCredits();
        Job storage job = _existing(jobId);
        JobStatus status = job.status;
        if (status >= JobStatus.FINISHED) revert InvalidStatus(jobId, status);
        uint256 escrow = job.escrow;
        if (status == JobStatus.RUNNING && _billUntil(job, block.timestamp) >= escrow) revert EscrowExhausted(jobId);
        escrow += amount;
        if (escrow > type(uint64).max) revert EscrowOverflow(jobId);
        job.escrow = uint64(escrow);
        uint256 pulled = _payment(amount, viaPermit);
        _owed += uint192(pulled);
        emit JobToppedUp(jobId, _providerAt[job.providerId], msg.sender, amount, uint64(escrow));
        if (pulled != 0) token.safeTransferFrom(msg.sender, address(this), pulled);
    }

    /// @dev Moves a job to a final status: `bill` (<= escrow) to the provider, the rest to the owner,
    ///      capacity released. Effects only: payouts are pulled later through `withdraw`.
    ///      `caller` is msg.sender when it was checked to be the assigned provider (saves a lookup), else 0.
    function _settle(uint256 jobId, Job storage job, JobStatus status, int32 exitCode, uint256 bill, address caller)
        private
    {
        JobStatus previous = job.status;
        uint64 escrow = job.escrow;
        if (bill > escrow) bill = escrow;
        uint64 refund = escrow - uint64(bill);
        address owner = job.owner;
        address provider = address(0); // stays zero when the job never reached a provider
        job.status = status; // the escrow is left in its word (a write saved): getJob reports 0 once final
        if (previous >= JobStatus.META_SCHEDULED) {
            provider = caller != address(0) ? caller : _providerAt[job.providerId];
            _release(provider, job);
            if (bill != 0) _balances[provider] += bill;
        }
        if (refund != 0) _balances[owner] += refund;
        emit JobSettled(jobId, owner, provider, status, exitCode, uint64(bill), refund);
    }

    /// @dev Tokens to pull for a payment of `total`: `viaPermit` of it (what a permit covers; the
    ///      internal balance is not even read when that is all), then the internal balance, then tokens.
    function _payment(uint256 total, uint256 viaPermit) private returns (uint256 pulled) {
        if (viaPermit >= total) return total;
        return viaPermit + _takeBalance(msg.sender, total - viaPermit);
    }

    /// @dev Takes up to `amount` from the payer's internal balance; returns what is left to pull in tokens.
    function _takeBalance(address payer, uint256 amount) private returns (uint256 rest) {
        uint256 raw = _balances[payer];
        uint256 balance = raw & ~_TOUCHED;
        if (balance >= amount) {
            _balances[payer] = raw - amount;
            return 0;
        }
        if (balance != 0) _balances[payer] = raw - balance;
        return amount - balance;
    }

    function _permit(PermitSig calldata p) private {
        if (block.timestamp > p.deadline) revert PermitExpired(p.deadline);
        // A front-run permit must not block the payment: if it fails, the allowance it set is still there.
        try IERC20Permit(address(token)).permit(msg.sender, address(this), p.value, p.deadline, p.v, p.r, p.s) {}
        catch {} // solhint-disable-line no-empty-blocks
    }

    function _reporter() private view returns (uint32 pid, bool approved) {
        ProviderRecord storage p = _providers[msg.sender];
        return (p.id, p.status == ProviderStatus.APPROVED);
    }

    function _assigned(uint256 jobId, uint32 pid) private view returns (Job storage job, bytes memory err) {
        job = _jobs[jobId];
        if (job.status == JobStatus.NONE) err = abi.encodeWithSelector(JobNotFound.selector, jobId);
        else if (pid == 0 || job.providerId != pid) {
            err = abi.encodeWithSelector(NotAssignedProvider.selector, jobId, msg.sender);
        }
    }

    function _invalid(uint256 jobId, JobStatus status) private pure returns (bytes memory) {
        return abi.encodeWithSelector(InvalidStatus.selector, jobId, status);
    }

    function _check(bytes memory err) private pure {
        if (err.length != 0) {
            assembly {
                revert(add(err, 32), mload(err))
            }
        }
    }
}
