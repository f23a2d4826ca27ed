"""The contract-invariant state machine of tests/test_invariants.py, run longer than CI does.

Same machine, same checks after every step (model equality, credit conservation, supply, capacity, final
statuses, allowed transitions and callers, bills within escrow), on its own Anvil. Prints examples/s and
transactions/s, how often each call succeeded or failed with which named error, and any failure (hypothesis
shrinks it to a minimal sequence of calls). Exit code 1 on a failure.

    .venv/bin/python benchmarks/invariants_long.py                 # 2000 examples of 50 steps
    .venv/bin/python benchmarks/invariants_long.py --examples 500 --steps 100
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, settings

from tests.test_invariants import GridMachine, own_anvil, run_machine, setup_env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--examples", type=int, default=2_000, help="hypothesis examples (sequences of calls)")
    parser.add_argument("--steps", type=int, default=50, help="most calls per example")
    parser.add_argument("--derandomize", action="store_true", help="a fixed seed (reproducible runs)")
    args = parser.parse_args()
    config = settings(max_examples=args.examples, stateful_step_count=args.steps, deadline=None,
                      suppress_health_check=list(HealthCheck), database=None, derandomize=args.derandomize)
    node = own_anvil()
    t0 = time.monotonic()
    try:
        env = setup_env(node)
        try:
            elapsed, summary = run_machine(env, config)
        except BaseException:  # hypothesis re-raises the shrunk failure with the calls that produce it
            elapsed = time.monotonic() - t0
            traceback.print_exc()
            print(f"\nFAILED after {GridMachine.examples} examples, {GridMachine.steps} transactions, "
                  f"{elapsed:.0f} s")
            return 1
    finally:
        node.stop()
    print(summary)
    print(f"invariants long run: {GridMachine.examples} examples in {elapsed:.1f} s = "
          f"{GridMachine.examples / elapsed:.2f} examples/s, {GridMachine.steps / elapsed:.0f} transactions/s, "
          "no failure")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
