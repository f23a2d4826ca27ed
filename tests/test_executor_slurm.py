"""The Slurm executor against a real one-node Slurm (installed and started by the fixture).

The shared scenarios run with Slurm's real time granularity: a 1-minute limit,
enforced by slurmctld's 30 s timer. They run in the background while the other
tests run, so this module takes about as long as the timeout itself (60-95 s).
"""

from __future__ import annotations

from datetime import datetime

import pytest

from dsq_chain.executors import (
    SLURM_STATES,
    CommandError,
    ExecState,
    SlurmExecutor,
    parse_exit_code,
    parse_slurm_state,
)
from dsq_chain.executors.slurm import _gres_gpus, slurm_minutes, slurm_time
from tests.executor_contract import ExecutorContract, NewExecutor, Timing, spec, wait_final
from tests.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]


class TestSlurmExecutor(ExecutorContract):
    # 60 s limit; slurmctld checks limits every 30 s, then KillWait=2 s.
    timing = Timing(limit_s=60, extended_s=180, enforce_s=40, quick_s=30)

    @pytest.fixture(scope="class")
    @classmethod
    def new_executor(cls, slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> NewExecutor:  # noqa: F811
        root = tmp_path_factory.mktemp("slurm-exec")
        return lambda: SlurmExecutor(root, slurm_conf=slurm_cluster.conf)

    def test_capacity_matches_node(self, executor: SlurmExecutor, slurm_cluster: SlurmCluster) -> None:  # noqa: F811
        cap = executor.capacity()
        assert (cap.cpus, cap.mem_mb, cap.gpus) == (slurm_cluster.cpus, slurm_cluster.mem_mb, 0)
        assert executor.features() == frozenset()

    def test_user_sbatch_lines_are_inert(self, executor: SlurmExecutor, slurm_cluster: SlurmCluster) -> None:  # noqa: F811
        s = spec("#SBATCH --time=9999\n#SBATCH --job-name=evil\n#SBATCH --exclusive\necho ok\n", limit_s=61)
        exec_id = executor.submit(s)
        info = slurm_cluster.command("scontrol", "show", "job", "-o", exec_id).stdout
        assert f"JobName=dsq-{s.job_id} " in info
        assert "TimeLimit=00:02:00" in info  # 61 s rounded up to 2 minutes
        assert "OverSubscribe=YES" in info  # --exclusive ignored
        assert wait_final(executor, exec_id, 30).state is ExecState.COMPLETED

    def test_status_from_completion_file(self, executor: SlurmExecutor, slurm_cluster: SlurmCluster) -> None:  # noqa: F811
        """Without slurmdbd, a job slurmctld forgot (after MinJobAge) is still found with ``sacct -c``."""
        exec_id = executor.submit(spec("exit 5\n"))
        st = wait_final(executor, exec_id, 30)
        acct = executor._from_accounting(exec_id)
        assert acct is not None
        assert (acct.state, acct.exit_code, acct.started, acct.ended_at) == (st.state, st.exit_code, st.started,
                                                                              st.ended_at)
        assert (acct.state, acct.exit_code) == (ExecState.FAILED, 5)

    def test_command_errors_are_clear(self, executor: SlurmExecutor, tmp_path_factory: pytest.TempPathFactory) -> None:
        with pytest.raises(CommandError) as err:
            executor.run("scontrol", "update", "JobId=1", "Nonsense=1")
        assert err.value.returncode == 1 and err.value.stderr
        msg = str(err.value)
        assert (
            "scontrol update JobId=1 Nonsense=1" in msg
            and "exited with code 1" in msg
            and err.value.stderr.strip() in msg
        )
        missing = SlurmExecutor(tmp_path_factory.mktemp("nobin"), bin_dir="/nonexistent")
        with pytest.raises(CommandError, match=r"sinfo.*could not be started"):
            missing.capacity()
        slow = SlurmExecutor(tmp_path_factory.mktemp("noconf"), slurm_conf="/nonexistent.conf", command_timeout_s=1)
        with pytest.raises(CommandError, match=r"sinfo.*timed out after 1 s.*nonexistent\.conf"):
            slow.capacity()


# --- pure parsing (no cluster) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("PENDING", ExecState.PENDING),
        ("CONFIGURING", ExecState.PENDING),
        ("REQUEUED", ExecState.PENDING),
        ("RUNNING", ExecState.RUNNING),
        ("COMPLETING", ExecState.RUNNING),
        ("SUSPENDED", ExecState.RUNNING),
        ("COMPLETED", ExecState.COMPLETED),
        ("FAILED", ExecState.FAILED),
        ("TIMEOUT", ExecState.TIMEOUT),
        ("DEADLINE", ExecState.TIMEOUT),
        ("CANCELLED", ExecState.CANCELLED),
        ("CANCELLED by 0", ExecState.CANCELLED),
        ("CANCELLED+", ExecState.CANCELLED),
        ("NODE_FAIL", ExecState.NODE_FAIL),
        ("OUT_OF_MEMORY", ExecState.OUT_OF_MEMORY),
        ("PREEMPTED", ExecState.PREEMPTED),
        ("BOOT_FAIL", ExecState.BOOT_FAIL),
        ("SPECIAL_EXIT", ExecState.FAILED),
        ("running", ExecState.RUNNING),
        ("SOMETHING_NEW", ExecState.UNKNOWN),
        ("", ExecState.UNKNOWN),
    ],
)
def test_parse_slurm_state(raw: str, state: ExecState) -> None:
    assert parse_slurm_state(raw) is state


def test_every_final_exec_state_has_a_slurm_state() -> None:
    finals = {s for s in ExecState if s.is_final}
    assert finals <= set(SLURM_STATES.values())


@pytest.mark.parametrize(
    ("raw", "code"),
    [("0:0", 0), ("3:0", 3), ("0:15", 143), ("0:9", 137), ("2:9", 2), ("7", 7), ("", None), ("N/A", None)],
)
def test_parse_exit_code(raw: str, code: int | None) -> None:
    assert parse_exit_code(raw) == code


@pytest.mark.parametrize(("seconds", "minutes"), [(1, 1), (59, 1), (60, 1), (61, 2), (3600, 60), (3601, 61)])
def test_slurm_minutes(seconds: int, minutes: int) -> None:
    assert slurm_minutes(seconds) == minutes


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [("(null)", 0), ("gpu:2", 2), ("gpu:a100:4(S:0-1)", 4), ("gpu:a100:2,gpu:v100:1", 3), ("mps:100", 0)],
)
def test_gres_gpus(gres: str, gpus: int) -> None:
    assert _gres_gpus(gres) == gpus


def test_sbatch_args(tmp_path_factory: pytest.TempPathFactory) -> None:
    ex = SlurmExecutor(tmp_path_factory.mktemp("args"), partition="gpu", extra_args=["--qos=high"])
    d = ex.jobs / "9-0123abcd"
    plain = ex.sbatch_args(spec("true", limit_s=90, mem_per_cpu_mb=0, tasks=4, cpus_per_task=2), d)
    assert "--time=2" in plain and "--ntasks=4" in plain and "--cpus-per-task=2" in plain
    assert not any(a.startswith(("--gpus", "--mem-per-cpu")) for a in plain)
    assert plain[-2:] == ["--qos=high", str(d / "batch.sh")] and "--partition=gpu" in plain
    gpu = ex.sbatch_args(spec("true", gpus=2, mem_per_cpu_mb=512), d)
    assert "--gpus=2" in gpu and "--mem-per-cpu=512" in gpu
    assert "--no-requeue" in gpu and f"--output={d / 'stdout'}" in gpu


def test_slurm_time() -> None:
    assert slurm_time("2026-12-02T12:30:01") == datetime(2026, 12, 2, 12, 30, 1).timestamp()
    for text in ("Unknown", "None", "", "2026-12-02 12:30:01"):
        assert slurm_time(text) is None
