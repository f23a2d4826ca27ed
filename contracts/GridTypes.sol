// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @notice Lifecycle of a job. Final statuses (FINISHED and after) never change.
enum JobStatus {
    NONE,
    PENDING,
    META_SCHEDULED,
    SCHEDULED,
    RUNNING,
    FINISHED,
    FAILED,
    OUT_OF_CREDITS,
    CANCELED,
    PANICKED
}

/// @notice Registration state of a provider.
enum ProviderStatus {
    NONE,
    PENDING,
    APPROVED,
    BANNED,
    REMOVED
}

/// @notice Why an assigned job went back to PENDING.
enum ReleaseReason {
    REFUSED,
    CLAIM_TIMEOUT,
    PROVIDER_BANNED
}

/// @notice What a provider reports for one job in a batched `report` call.
enum ReportAction {
    CLAIM,
    REFUSE,
    START,
    FINISH,
    OUT_OF_CREDITS,
    PANIC
}

/// @notice Operator of an on-chain label constraint. Ordering operators compare numeric words only.
enum LabelOp {
    EQ,
    NE,
    LT,
    LE,
    GT,
    GE
}

/// @notice What a job asks for. Resources are totals over all its tasks.
/// @param cpus CPU cores (>= 1)
/// @param gpus GPUs
/// @param memMB memory in MB (>= 1)
/// @param maxRate the most the owner pays, in credit units per minute (> 0)
/// @param credits escrow locked for the job, in credit units (> 0)
/// @param diskGB scratch disk in GB, reserved on the provider like memory
/// @param externalRef a reference outside the grid (e.g. an Akash deployment: owner address and dseq, see the
///        SDK's `external_ref`), emitted in `JobSubmitted` and stored nowhere
struct JobRequest {
    uint16 cpus;
    uint8 gpus;
    uint32 memMB;
    uint56 maxRate;
    uint64 credits;
    uint16 diskGB;
    bytes32 externalRef;
}

/// @notice A job's requirement on a provider label: `label(key) op value`.
/// @dev `key` is keccak256 of the label name; values are 32-byte words: a number n < 2**240 is
///      encoded as 2**240 + n, a string as its UTF-8 bytes left-aligned; the zero word means absent.
///      The reserved key keccak256("@provider") places the job: `== address` entries list the providers
///      allowed to run it (any of them), `!= address` entries exclude providers (value: the address as a word).
struct LabelConstraint {
    bytes32 key;
    LabelOp op;
    bytes32 value;
}

/// @notice Hardware a provider offers (or has free).
/// @param diskGB scratch disk in GB (reserved by jobs that ask for disk)
/// @param persistentGB persistent storage in GB (declared; not reserved by jobs)
struct Hardware {
    uint32 cpus;
    uint16 gpus;
    uint32 memMB;
    uint32 diskGB;
    uint32 persistentGB;
}

/// @notice A provider's prices in credit units per minute.
struct Prices {
    uint40 perCpuMinute;
    uint40 perGpuMinute;
    uint40 perGbMinute;
}

/// @notice One entry of a provider's batched report.
/// @param exitCode the job's exit code, read for FINISH only (0 → FINISHED, other → FAILED)
/// @param endTime for FINISH: when the engine saw the job end (unix seconds; 0 = now). The bill runs up
///        to it, bounded by the start time and the report's block time: a provider can only lower its bill.
struct Report {
    uint256 jobId;
    ReportAction action;
    int32 exitCode;
    uint64 endTime;
}

/// @notice An EIP-2612 permit signed by the payer for the market.
struct PermitSig {
    uint256 value;
    uint256 deadline;
    uint8 v;
    bytes32 r;
    bytes32 s;
}

/// @notice Read-only view of a job, as returned by `JobMarket.getJob`.
struct JobView {
    uint256 id;
    address owner;
    JobStatus status;
    address provider;
    uint64 escrow;
    uint56 rate;
    uint64 since;
    uint56 maxRate;
    uint16 cpus;
    uint8 gpus;
    uint32 memMB;
    uint16 diskGB;
    bytes32 labelsHash;
    uint256 headId; // first job of its array: the JobSubmitted event (workflow and its hash) is indexed by it
}

/// @notice Read-only view of a provider, as returned by `getProvider`.
struct ProviderView {
    address addr;
    uint32 id;
    ProviderStatus status;
    bool paused;
    Hardware total;
    Hardware free;
    Prices prices;
}
