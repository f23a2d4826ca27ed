// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Hardware, JobStatus, LabelConstraint, LabelOp, ProviderStatus, ReleaseReason} from "./GridTypes.sol";

/// @title GridStorage
/// @notice The state shared by the two halves of the market: `JobMarket` (the job lifecycle, the hot
///         path) and `ProviderRegistry` (providers, admin, views), which `JobMarket` runs on its own
///         storage through DELEGATECALL. Both inherit this contract and nothing else with state, so
///         they see one storage layout; neither declares state of its own.
abstract contract GridStorage {
    /// @dev One provider in two storage words. Everything an assignment of a job without disk reads
    ///      or writes (status, free cpus/gpus/memory, prices) is in word 0.
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
        uint32 diskGB;
        uint32 freeDiskGB;
        uint32 persistentGB;
    }

    /// @dev One job in two storage words; the labels hash lives once per job array, the workflow hash
    ///      only in the submission event.
    struct Job {
        // word 0: written at submission, read when settling (and at assignment for jobs with disk)
        address owner;
        uint64 escrow; // meaningful while the job is not final: settling leaves it in place
        uint16 headOffset; // this job's id minus its array head's id
        uint16 diskGB;
        // word 1: everything assignment and reports read or write
        JobStatus status;
        uint8 flags; // _HAS_LABELS | _HAS_DISK
        uint32 providerId;
        uint56 rate; // credit units per minute, snapshotted at assignment
        uint40 since; // assignment time while META_SCHEDULED/SCHEDULED, start time while RUNNING
        uint56 maxRate;
        uint16 cpus;
        uint8 gpus;
        uint32 memMB;
    }

    /// @notice Role of the meta-scheduler: it assigns jobs and may panic them.
    bytes32 public constant SCHEDULER_ROLE = keccak256("SCHEDULER_ROLE");
    /// @notice Role of the deployment's admin.
    bytes32 public constant DEFAULT_ADMIN_ROLE = 0x00;
    /// @dev Label key reserved for direct placement and exclusion: keccak256("@provider").
    bytes32 internal constant _PROVIDER_KEY = keccak256("@provider");
    uint8 internal constant _HAS_LABELS = 1;
    uint8 internal constant _HAS_DISK = 2;
    uint256 internal constant _TOUCHED = 1 << 255;

    mapping(bytes32 role => mapping(address account => bool)) internal _roles;
    mapping(address provider => ProviderRecord) internal _providers;
    mapping(uint32 id => address provider) internal _providerAt;
    mapping(address provider => mapping(uint32 epoch => mapping(bytes32 key => bytes32 value))) internal _labels;
    uint32 internal _providerCount;
    /// @dev Seconds a provider has to claim an assignment.
    uint64 internal _claimTimeout;
    /// @dev Seconds between scheduling and executing a delayed admin action.
    uint64 internal _adminDelay;
    mapping(uint256 jobId => Job) internal _jobs;
    mapping(uint256 headId => bytes32) internal _labelsHash;
    /// @dev Internal balances. Bit 255 marks an account that has withdrawn: its slot never returns to
    ///      zero, so its next refund or earning costs a 5k write instead of a 22k one.
    mapping(address account => uint256) internal _balances;
    /// @dev Next job id and the credits the market owes (escrows + internal balances) share one word:
    ///      every submission writes it anyway, so tracking what is owed costs no extra slot.
    uint64 internal _nextJobId;
    uint192 internal _owed;
    /// @dev When each scheduled admin action may run (0: not scheduled).
    mapping(bytes32 operation => uint256 readyAt) internal _scheduled;

    /// @notice `account` received `role` (same event as OpenZeppelin's AccessControl).
    event RoleGranted(bytes32 indexed role, address indexed account, address indexed sender);
    /// @notice `account` lost `role`.
    event RoleRevoked(bytes32 indexed role, address indexed account, address indexed sender);
    /// @notice An assigned job went back to PENDING.
    event JobReleased(uint256 indexed jobId, address indexed provider, ReleaseReason reason);

    /// @notice The caller lacks `neededRole`.
    error AccessControlUnauthorizedAccount(address account, bytes32 neededRole);
    /// @notice No job has this id.
    error JobNotFound(uint256 jobId);
    /// @notice The job's status does not allow this action.
    error InvalidStatus(uint256 jobId, JobStatus status);
    /// @notice The provider is not approved (pending, banned or removed).
    error ProviderNotApproved(address provider);
    /// @notice The provider paused taking new jobs.
    error ProviderIsPaused(address provider);
    /// @notice The provider does not have the job's resources free.
    error InsufficientCapacity(address provider, Hardware needed, Hardware free);
    /// @notice The provider's labels do not satisfy the job's constraint on `key`.
    error LabelMismatch(uint256 jobId, bytes32 key);
    /// @notice Two arrays that go together differ in length.
    error LengthMismatch(uint256 a, uint256 b);
    /// @notice The job's placement (allowed or excluded providers) rules this provider out.
    error ProviderNotAllowed(uint256 jobId, address provider);

    modifier onlyRole(bytes32 role) {
        _checkRole(role, msg.sender);
        _;
    }

    function _checkRole(bytes32 role, address account) internal view {
        if (!_roles[role][account]) revert AccessControlUnauthorizedAccount(account, role);
    }

    function _grant(bytes32 role, address account) internal {
        if (!_roles[role][account]) {
            _roles[role][account] = true;
            emit RoleGranted(role, account, msg.sender);
        }
    }

    function _revoke(bytes32 role, address account) internal {
        if (_roles[role][account]) {
            _roles[role][account] = false;
            emit RoleRevoked(role, account, msg.sender);
        }
    }

    // ------------------------------------------------------------------ capacity

    /// @dev Gives back the capacity a job held on `provider`. Never exceeds the declared totals
    ///      (hardware can only shrink down to what is in use).
    function _release(address provider, Job storage job) internal {
        ProviderRecord storage p = _providers[provider];
        (p.freeCpus, p.freeGpus, p.freeMemMB) = (p.freeCpus + job.cpus, p.freeGpus + job.gpus, p.freeMemMB + job.memMB);
        if (job.flags & _HAS_DISK != 0) p.freeDiskGB += job.diskGB;
    }

    function _backToPending(uint256 jobId, Job storage job, ReleaseReason reason, address provider) internal {
        if (provider == address(0)) provider = _providerAt[job.providerId];
        _release(provider, job);
        job.status = JobStatus.PENDING;
        job.providerId = 0;
        job.rate = 0;
        job.since = 0;
        emit JobReleased(jobId, provider, reason);
    }

    // ------------------------------------------------------------------ shared reads

    function _rate(ProviderRecord storage p, uint256 cpus, uint256 gpus, uint256 memMB) internal view returns (uint256) {
        return cpus * p.perCpuMinute + gpus * p.perGpuMinute + (memMB * p.perGbMinute) / 1024;
    }

    /// @dev Credit units a RUNNING job has used by `end` (>= its start: checked arithmetic reverts
    ///      otherwise), capped by its escrow.
    function _billUntil(Job storage job, uint256 end) internal view returns (uint256 bill) {
        bill = (uint256(job.rate) * (end - job.since)) / 60;
        uint256 escrow = job.escrow;
        if (bill > escrow) bill = escrow;
    }

    function _existing(uint256 jobId) internal view returns (Job storage job) {
        job = _jobs[jobId];
        if (job.owner == address(0)) revert JobNotFound(jobId);
    }

    function _isNumber(bytes32 word) internal pure returns (bool) {
        return word != bytes32(0) && uint256(word) >> 248 == 0;
    }
}
