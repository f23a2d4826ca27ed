"""The ``dsq`` command line. It only wires the library's services and clients together."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.exceptions import TyperException

from dsq_chain.cli import onboard as _onboard  # noqa: F401  (registers provider init/check/doctor)
from dsq_chain.cli.akash import akash_app
from dsq_chain.cli.common import Settings
from dsq_chain.cli.deploy import register as register_deploy
from dsq_chain.cli.jobs import register as register_job_commands
from dsq_chain.cli.provider import admin_app, provider_app
from dsq_chain.cli.services import devnet_app, register_logs, scheduler_app, worker_app
from dsq_chain.cli.simulate import register as register_simulate
from dsq_chain.cli.web import index_app
from dsq_chain.cli.web import register as register_dashboard

app = typer.Typer(
    name="dsq",
    no_args_is_help=True,
    add_completion=False,
    help="dsq-chain: a decentralized HPC grid. Submit jobs, run a provider, run the meta-scheduler.",
    pretty_exceptions_enable=False,
)


@app.callback()
def main_options(
    ctx: typer.Context,
    rpc_url: Annotated[str | None, typer.Option("--rpc-url", help="JSON-RPC URL (env DSQ_RPC_URL)")] = None,
    deployment: Annotated[Path | None, typer.Option(
        "--deployment", help="deployment file (env DSQ_DEPLOYMENT; default .dsq/deployment.json)")] = None,
    keystore: Annotated[Path | None, typer.Option(
        "--keystore", help="encrypted key file (env DSQ_KEYSTORE; else the key comes from env DSQ_PRIVATE_KEY)"),
    ] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="config file (env DSQ_CONFIG; default .dsq/config.json)")] = None,
) -> None:
    ctx.obj = Settings(rpc_url=rpc_url, deployment=deployment, keystore=keystore, config=config)


@app.command()
def build(check: Annotated[bool, typer.Option("--check", help="fail if the artifacts are stale")] = False) -> None:
    """Compiles contracts/ into the SDK's artifacts (from a source checkout)."""
    from dsq_chain.artifacts.build import main as build_main

    raise typer.Exit(build_main(["--check"] if check else []))


register_job_commands(app)
register_deploy(app)
register_logs(app)
register_dashboard(app)
register_simulate(app)
app.add_typer(provider_app, name="provider")
app.add_typer(admin_app, name="admin")
app.add_typer(scheduler_app, name="scheduler")
app.add_typer(worker_app, name="worker")
app.add_typer(devnet_app, name="devnet")
app.add_typer(akash_app, name="akash")
app.add_typer(index_app, name="index")


def main() -> None:
    """Runs the CLI; usage errors (unknown option, missing argument) are one line too, exit code 2."""
    try:
        result = app(standalone_mode=False)
    except typer.Exit as e:
        raise SystemExit(e.exit_code) from None
    except typer.Abort:
        print("dsq: aborted", file=sys.stderr)
        raise SystemExit(130) from None
    except TyperException as e:  # click-style usage errors
        format_message = getattr(e, "format_message", None)
        message = format_message() if callable(format_message) else str(e)
        ctx = getattr(e, "ctx", None)
        command = getattr(ctx, "command_path", None) or "dsq"
        print(f"dsq: error: {message} (see `{command} --help`)", file=sys.stderr)
        raise SystemExit(int(getattr(e, "exit_code", 2) or 2)) from None
    if isinstance(result, int):
        raise SystemExit(result)


if __name__ == "__main__":
    main()
