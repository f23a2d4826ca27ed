// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {ProviderRegistry} from "./ProviderRegistry.sol";
import {
    JobRequest,
    JobStatus,
    JobView,
    LabelConstraint,
    PermitSig,
    ProviderStatus,
    ReleaseReason,
    Report,
    ReportAction
} from "./GridTypes.sol";

/// @title JobMarket
/// @notice Holds job requests and their escrowed credits, takes the meta-scheduler's assignments,
///         the providers' reports and the owners' cancels and top-ups, and settles every bill on
///         chain time. Credits are conserved: the market's token balance always equals the sum of
///         escrows plus the sum of internal balances (refunds and provider earnings), which their
///         holders withdraw (pull payments). No role can move an owner's escrow to anyone but the
///         owner or, for work done, the provider that did it.
contract JobMarket is ProviderRegistry, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @dev One job in two storage words; the workflow and labels hashes live once per job array.
    struct Job {
        // word 0
        address owner;
        uint64 escrow; // meaningful while the job is not final: settling leaves it in place
        uint32 headOffset; // this job's id minus its array head's id (fills word 0: status must start word 1)
        // word 1
        JobStatus status;
        bool hasLabels;
        uint32 providerId;
        uint56 rate; // credit units per minute, snapshotted at assignment
        uint32 since; // assignment time while META_SCHEDULED, start time while RUNNING
        uint56 maxRate;
        uint16 cpus;
        uint8 gpus;
        uint32 memMB;
    }

    /// @notice Role of the meta-scheduler: it assigns jobs and may panic them.
    bytes32 public constant SCHEDULER_ROLE = keccak256("SCHEDULER_ROLE");
    /// @notice Largest workflow accepted, in bytes (it travels in calldata and the event).
    uint256 public constant MAX_WORKFLOW_BYTES = 16_384;
    /// @notice Most label constraints one job may carry.
    uint256 public constant MAX_JOB_LABELS = 16;
    /// @notice Most jobs in one job array.
    uint256 public constant MAX_ARRAY_JOBS = 500; // ~47k gas per array job: 500 fit a 30M-gas block

    /// @notice The credit token escrowed and paid out.
    IERC20 public immutable token;
    /// @notice Seconds an assigned provider has to claim before anyone may send the job back to PENDING.
    uint32 public claimTimeout;

    mapping(uint256 jobId => Job) internal _jobs;
    mapping(uint256 headId => bytes32) internal _workflowHash;
    mapping(uint256 headId => bytes32) internal _labelsHash;
    /// @dev Internal balances. Bit 255 marks an account that has withdrawn: its slot never returns to
    ///      zero, so its next refund or earning costs a 5k write instead of a 22k one. Balances stay
    ///      far below 2**255 (the token caps its supply at 2**128).
    mapping(address account => uint256) internal _balances;
    uint256 private constant _TOUCHED = 1 << 255;
    uint256 internal _nextJobId = 1;

    /// @notice Jobs `firstJobId` .. `firstJobId + count - 1` were submitted with the same request and workflow.
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
    /// @notice An assigned job went back to PENDING.
    event JobReleased(uint256 indexed jobId, address indexed provider, ReleaseReason reason);
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
    /// @notice An account withdrew its internal balance.
    event Withdrawn(address indexed account, uint256 amount);
    /// @notice The admin changed the claim timeout.
    event ClaimTimeoutChanged(uint32 claimTimeout);

    /// @notice No job has this id.
    error JobNotFound(uint256 jobId);
    /// @notice The job's status does not allow this action.
    error InvalidStatus(uint256 jobId, JobStatus status);
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
    /// @notice The claim window of this job has not passed yet.
    error ClaimNotExpired(uint256 jobId, uint256 expiresAt);
    /// @notice The job's escrow still pays for more time.
    error EscrowNotExhausted(uint256 jobId, uint256 billedSoFar, uint256 escrow);
    /// @notice The escrow would exceed 64 bits.
    error EscrowOverflow(uint256 jobId);
    /// @notice The permit's deadline has passed.
    error PermitExpired(uint256 deadline);
    /// @notice The caller has no balance to withdraw.
    error NothingToWithdraw(address account);

    /// @param credits the credit token
    /// @param admin receives DEFAULT_ADMIN_ROLE
    /// @param initialClaimTimeout seconds a provider has to claim an assignment
    constructor(IERC20 credits, address admin, uint32 initialClaimTimeout) {
        token = credits;
        claimTimeout = initialClaimTimeout;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    // ================================================================== owners

    /// @notice Submits `count` identical jobs (a job array; 1 for a single job), locking
    ///         `request.credits` per job. Credits come from the caller's internal balance first,
    ///         then from the token (approve the market first, or use `submitWithPermit`).
    /// @param request resources, price cap and escrow per job
    /// @param labels constraints on the provider's labels, checked at assignment
    /// @param workflow the workflow bytes; only their hash is stored
    /// @param count number of jobs in the array
    /// @return firstJobId id of the first job; the others follow consecutively
    function submit(
        JobRequest calldata request,
        LabelConstraint[] calldata labels,
        bytes calldata workflow,
        uint256 count
    ) external nonReentrant returns (uint256 firstJobId) {
        firstJobId = _submit(request, labels, workflow, count);
        _collect(msg.sender, uint256(request.credits) * count);
    }

    /// @notice Same as `submit`, paying through an EIP-2612 permit signed for this market, in one transaction.
    /// @param request resources, price cap and escrow per job
    /// @param labels constraints on the provider's labels
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
        firstJobId = _submit(request, labels, workflow, count);
        _collect(msg.sender, uint256(request.credits) * count);
    }

    /// @notice Adds escrow to a non-final job, extending how long it may run. Anyone may pay.
    /// @param jobId the job
    /// @param amount credit units to add
    function topUp(uint256 jobId, uint64 amount) external nonReentrant {
        _topUp(jobId, amount);
        _collect(msg.sender, amount);
    }

    /// @notice Same as `topUp`, paying through an EIP-2612 permit.
    /// @param jobId the job
    /// @param amount credit units to add
    /// @param permit the payer's permit
    function topUpWithPermit(uint256 jobId, uint64 amount, PermitSig calldata permit) external nonReentrant {
        _permit(permit);
        _topUp(jobId, amount);
        _collect(msg.sender, amount);
    }

    /// @notice Cancels the caller's job: full refund before it runs, billed up to now while RUNNING.
    /// @param jobId the job
    function cancel(uint256 jobId) external {
        Job storage job = _existing(jobId);
        if (job.owner != msg.sender) revert NotJobOwner(jobId, msg.sender);
        JobStatus status = job.status;
        if (status >= JobStatus.FINISHED) revert InvalidStatus(jobId, status);
        _settle(jobId, job, JobStatus.CANCELED, 0, status == JobStatus.RUNNING ? _billSoFar(job) : 0, address(0));
    }

    /// @notice Withdraws the caller's whole internal balance (refunds and earnings) as tokens.
    function withdraw() external nonReentrant {
        uint256 amount = _balances[msg.sender] & ~_TOUCHED;
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        _balances[msg.sender] = _TOUCHED;
        emit Withdrawn(msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    // ================================================================== scheduler

    /// @notice Assigns one PENDING job to a provider (PENDING → META_SCHEDULED).
    /// @param jobId the job
    /// @param provider an approved, active provider with the job's resources free
    /// @param labels the job's label constraints exactly as submitted (empty if none)
    function assign(uint256 jobId, address provider, LabelConstraint[] calldata labels)
        external
        onlyRole(SCHEDULER_ROLE)
    {
        _assign(jobId, provider, labels);
    }

    /// @notice Assigns many jobs in one transaction, with the same checks per job as `assign`.
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
            _assign(jobIds[i], providers[i], labels[i]);
            unchecked {
                ++i;
            }
        }
    }

    /// @notice Sends a META_SCHEDULED job whose claim window passed back to PENDING. Anyone may call.
    /// @param jobId the job
    function timeoutClaim(uint256 jobId) external {
        Job storage job = _existing(jobId);
        if (job.status != JobStatus.META_SCHEDULED) revert InvalidStatus(jobId, job.status);
        uint256 expiresAt = uint256(job.since) + claimTimeout;
        if (block.timestamp < expiresAt) revert ClaimNotExpired(jobId, expiresAt);
        _backToPending(jobId, job, ReleaseReason.CLAIM_TIMEOUT, address(0));
    }

    /// @notice Ends a non-final job as PANICKED (a provider-side fault): the whole escrow goes back
    ///         to the owner. Callable by the scheduler, the admin, or the job's assigned provider.
    /// @param jobId the job
    function panic(uint256 jobId) external {
        Job storage job = _existing(jobId);
        uint32 pid = job.providerId;
        bool allowed = hasRole(SCHEDULER_ROLE, msg.sender) || hasRole(DEFAULT_ADMIN_ROLE, msg.sender)
            || (pid != 0 && _providerId(msg.sender) == pid);
        if (!allowed) revert NotAllowedToPanic(jobId, msg.sender);
        _panic(jobId, job, address(0));
    }

    /// @notice Sets the claim timeout for future checks.
    /// @param seconds_ the new timeout in seconds
    function setClaimTimeout(uint32 seconds_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        claimTimeout = seconds_;
        emit ClaimTimeoutChanged(seconds_);
    }

    // ================================================================== providers

    /// @notice Accepts an assignment (META_SCHEDULED → SCHEDULED).
    /// @param jobId the job
    function claim(uint256 jobId) external {
        _claim(jobId, _providerId(msg.sender));
    }

    /// @notice Refuses an assignment (META_SCHEDULED/SCHEDULED → PENDING); the job can be matched again.
    /// @param jobId the job
    function refuse(uint256 jobId) external {
        _refuse(jobId, _providerId(msg.sender));
    }

    /// @notice Reports that the job's work started (SCHEDULED → RUNNING); billing starts now.
    /// @param jobId the job
    function start(uint256 jobId) external {
        _start(jobId, _providerId(msg.sender));
    }

    /// @notice Reports the end of a RUNNING job: exit code 0 → FINISHED, other → FAILED.
    ///         Bill = rate × elapsed chain time, capped by the escrow; the rest is refunded.
    /// @param jobId the job
    /// @param exitCode the job's exit code
    function finish(uint256 jobId, int32 exitCode) external {
        _finish(jobId, _providerId(msg.sender), exitCode);
    }

    /// @notice Ends a RUNNING job whose escrow is used up (OUT_OF_CREDITS, whole escrow billed). Anyone may call.
    /// @param jobId the job
    function reportOutOfCredits(uint256 jobId) external {
        _outOfCredits(jobId, _existing(jobId), address(0));
    }

    /// @notice Applies many reports of the caller's jobs in one transaction, with the same checks
    ///         per job as the single calls.
    /// @param reports one entry per job: action and, for FINISH, the exit code
    function report(Report[] calldata reports) external {
        uint32 pid = _providerId(msg.sender);
        uint256 n = reports.length;
        for (uint256 i; i < n; ) {
            Report calldata r = reports[i];
            ReportAction action = r.action;
            uint256 jobId = r.jobId;
            if (action == ReportAction.CLAIM) _claim(jobId, pid);
            else if (action == ReportAction.START) _start(jobId, pid);
            else if (action == ReportAction.FINISH) _finish(jobId, pid, r.exitCode);
            else if (action == ReportAction.REFUSE) _refuse(jobId, pid);
            else if (action == ReportAction.OUT_OF_CREDITS) {
                _outOfCredits(jobId, _assigned(jobId, pid), msg.sender);
            } else {
                _panic(jobId, _assigned(jobId, pid), msg.sender);
            }
            unchecked {
                ++i;
            }
        }
    }

    // ================================================================== views

    /// @notice A job's full record.
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
            workflowHash: _workflowHash[head],
            labelsHash: job.hasLabels ? _labelsHash[head] : bytes32(0),
            headId: head
        });
    }

    /// @notice Up to `count` jobs from `fromId` (bounded by existing ids; at most 500).
    /// @param fromId first job id
    /// @param count how many
    function getJobs(uint256 fromId, uint256 count) external view returns (JobView[] memory views) {
        if (fromId == 0) fromId = 1;
        uint256 end = fromId + (count > 500 ? 500 : count);
        if (end > _nextJobId) end = _nextJobId;
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

    /// @notice Credit units a RUNNING job has used so far (capped by its escrow); 0 otherwise.
    /// @param jobId the job
    function billSoFar(uint256 jobId) external view returns (uint256) {
        Job storage job = _existing(jobId);
        return job.status == JobStatus.RUNNING ? _billSoFar(job) : 0;
    }

    // ================================================================== internals

    function _submit(
        JobRequest calldata request,
        LabelConstraint[] calldata labels,
        bytes calldata workflow,
        uint256 count
    ) private returns (uint256 firstJobId) {
        if (request.cpus == 0 || request.memMB == 0) revert InvalidResources();
        if (request.maxRate == 0) revert ZeroPriceCap();
        if (request.credits == 0) revert ZeroCredits();
        if (workflow.length == 0) revert EmptyWorkflow();
        if (workflow.length > MAX_WORKFLOW_BYTES) revert WorkflowTooLarge(workflow.length, MAX_WORKFLOW_BYTES);
        if (count == 0 || count > MAX_ARRAY_JOBS) revert InvalidArrayCount(count, MAX_ARRAY_JOBS);
        if (labels.length > MAX_JOB_LABELS) revert TooManyJobLabels(labels.length, MAX_JOB_LABELS);

        firstJobId = _nextJobId;
        _nextJobId = firstJobId + count;
        bytes32 workflowHash = keccak256(workflow);
        _workflowHash[firstJobId] = workflowHash;
        bool hasLabels = labels.length != 0;
        if (hasLabels) _labelsHash[firstJobId] = keccak256(abi.encode(labels));
        for (uint256 i; i < count; ) {
            _jobs[firstJobId + i] = Job({
                owner: msg.sender,
                escrow: request.credits,
                headOffset: uint32(i),
                status: JobStatus.PENDING,
                hasLabels: hasLabels,
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
        emit JobSubmitted(firstJobId, msg.sender, count, request, labels, workflowHash, workflow);
    }

    function _assign(uint256 jobId, address provider, LabelConstraint[] calldata labels) private {
        Job storage job = _jobs[jobId];
        JobStatus status = job.status;
        if (status != JobStatus.PENDING) {
            if (status == JobStatus.NONE) revert JobNotFound(jobId);
            revert InvalidStatus(jobId, status);
        }
        if (job.hasLabels) {
            if (keccak256(abi.encode(labels)) != _labelsHash[jobId - job.headOffset]) revert LabelsMismatch(jobId);
            _checkLabels(jobId, provider, labels);
        } else if (labels.length != 0) {
            revert LabelsMismatch(jobId);
        }
        uint256 rate = _reserve(provider, job.cpus, job.gpus, job.memMB);
        if (rate > job.maxRate) revert PriceAboveCap(jobId, rate, job.maxRate);
        job.status = JobStatus.META_SCHEDULED;
        job.providerId = _providerId(provider);
        job.rate = uint56(rate); // rate <= maxRate < 2**56
        job.since = uint32(block.timestamp);
        emit JobAssigned(jobId, provider, uint56(rate));
    }

    function _claim(uint256 jobId, uint32 pid) private {
        Job storage job = _assigned(jobId, pid);
        if (job.status != JobStatus.META_SCHEDULED) revert InvalidStatus(jobId, job.status);
        if (_providers[msg.sender].status != ProviderStatus.APPROVED) revert ProviderNotApproved(msg.sender);
        job.status = JobStatus.SCHEDULED;
        emit JobStatusChanged(jobId, msg.sender, JobStatus.SCHEDULED);
    }

    function _refuse(uint256 jobId, uint32 pid) private {
        Job storage job = _assigned(jobId, pid);
        JobStatus status = job.status;
        if (status != JobStatus.META_SCHEDULED && status != JobStatus.SCHEDULED) revert InvalidStatus(jobId, status);
        _backToPending(jobId, job, ReleaseReason.REFUSED, msg.sender);
    }

    function _start(uint256 jobId, uint32 pid) private {
        Job storage job = _assigned(jobId, pid);
        if (job.status != JobStatus.SCHEDULED) revert InvalidStatus(jobId, job.status);
        job.status = JobStatus.RUNNING;
        job.since = uint32(block.timestamp);
        emit JobStatusChanged(jobId, msg.sender, JobStatus.RUNNING);
    }

    function _finish(uint256 jobId, uint32 pid, int32 exitCode) private {
        Job storage job = _assigned(jobId, pid);
        if (job.status != JobStatus.RUNNING) revert InvalidStatus(jobId, job.status);
        _settle(jobId, job, exitCode == 0 ? JobStatus.FINISHED : JobStatus.FAILED, exitCode, _billSoFar(job), msg.sender);
    }

    function _outOfCredits(uint256 jobId, Job storage job, address caller) private {
        if (job.status != JobStatus.RUNNING) revert InvalidStatus(jobId, job.status);
        uint256 used = _billSoFar(job);
        if (used < job.escrow) revert EscrowNotExhausted(jobId, used, job.escrow);
        _settle(jobId, job, JobStatus.OUT_OF_CREDITS, 0, used, caller);
    }

    function _panic(uint256 jobId, Job storage job, address caller) private {
        JobStatus status = job.status;
        if (status >= JobStatus.FINISHED) revert InvalidStatus(jobId, status);
        _settle(jobId, job, JobStatus.PANICKED, 0, 0, caller);
    }

    function _topUp(uint256 jobId, uint64 amount) private {
        if (amount == 0) revert ZeroCredits();
        Job storage job = _existing(jobId);
        JobStatus status = job.status;
        if (status >= JobStatus.FINISHED) revert InvalidStatus(jobId, status);
        uint256 escrow = uint256(job.escrow) + amount;
        if (escrow > type(uint64).max) revert EscrowOverflow(jobId);
        job.escrow = uint64(escrow);
        emit JobToppedUp(jobId, _providerAt[job.providerId], msg.sender, amount, uint64(escrow));
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
            _release(provider, job.cpus, job.gpus, job.memMB);
            if (bill != 0) _balances[provider] += bill;
        }
        if (refund != 0) _balances[owner] += refund;
        emit JobSettled(jobId, owner, provider, status, exitCode, uint64(bill), refund);
    }

    function _backToPending(uint256 jobId, Job storage job, ReleaseReason reason, address caller) private {
        address provider = caller != address(0) ? caller : _providerAt[job.providerId];
        _release(provider, job.cpus, job.gpus, job.memMB);
        job.status = JobStatus.PENDING;
        job.providerId = 0;
        job.rate = 0;
        job.since = 0;
        emit JobReleased(jobId, provider, reason);
    }

    /// @dev Takes `amount` from the payer's internal balance first, then from its tokens (last: interaction).
    function _collect(address payer, uint256 amount) private {
        uint256 raw = _balances[payer];
        uint256 balance = raw & ~_TOUCHED;
        if (balance >= amount) {
            _balances[payer] = raw - amount;
            return;
        }
        if (balance != 0) _balances[payer] = raw - balance;
        token.safeTransferFrom(payer, address(this), amount - balance);
    }

    function _permit(PermitSig calldata p) private {
        if (block.timestamp > p.deadline) revert PermitExpired(p.deadline);
        // A front-run permit must not block the payment: if it fails, the allowance it set is still there.
        try IERC20Permit(address(token)).permit(msg.sender, address(this), p.value, p.deadline, p.v, p.r, p.s) {}
        catch {} // solhint-disable-line no-empty-blocks
    }

    function _billSoFar(Job storage job) private view returns (uint256 bill) {
        bill = (uint256(job.rate) * (block.timestamp - job.since)) / 60;
        if (bill > job.escrow) bill = job.escrow;
    }

    function _existing(uint256 jobId) private view returns (Job storage job) {
        job = _jobs[jobId];
        if (job.owner == address(0)) revert JobNotFound(jobId);
    }

    function _assigned(uint256 jobId, uint32 pid) private view returns (Job storage job) {
        job = _jobs[jobId];
        if (job.status == JobStatus.NONE) revert JobNotFound(jobId);
        if (pid == 0 || job.providerId != pid) revert NotAssignedProvider(jobId, msg.sender);
    }
}
