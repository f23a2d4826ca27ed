"""``dsq deploy``: the whole stack to any EVM network, priced first, confirmed, checked and resumable
(:class:`dsq_chain.sdk.network_deploy.NetworkDeployer` does the work)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from dsq_chain.cli.common import errors, settings
from dsq_chain.errors import InputError
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.network_deploy import NETWORK_ADMIN_DELAY, NetworkDeployer


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)


def deploy(
    ctx: typer.Context,
    rpc_url: Annotated[str | None, typer.Option(
        "--rpc-url", help="JSON-RPC URL of the network (or dsq --rpc-url, env DSQ_RPC_URL)")] = None,
    keystore: Annotated[Path | None, typer.Option(
        "--keystore", help="the deploying account's encrypted eth-account keystore (the admin unless --admin)")] = None,
    password_file: Annotated[Path | None, typer.Option(
        "--password-file", help="file whose first line is the keystore password (else env DSQ_KEYSTORE_PASSWORD, "
                                "else a prompt)")] = None,
    deployment: Annotated[Path | None, typer.Option(
        "--deployment", help="deployment file to write (default .dsq/deployment.json); its progress is kept "
                             "beside it in NAME.progress.json")] = None,
    admin: Annotated[str | None, typer.Option(
        "--admin", help="address that receives every admin role and mints credits, e.g. a multisig (default: the "
                        "deploying account)")] = None,
    confirmations: Annotated[int, typer.Option(help="blocks each transaction must be deep")] = 1,
    claim_timeout: Annotated[int | None, typer.Option(
        "--claim-timeout", help="seconds a provider has to claim an assignment (default 300)")] = None,
    admin_delay: Annotated[int | None, typer.Option(
        "--admin-delay", help=f"seconds a delayed admin action waits in public (default {NETWORK_ADMIN_DELAY})")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each transaction")] = 600.0,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="send without asking")] = False,
) -> None:
    """Deploys CreditToken, ProviderRegistry and JobMarket to a network; run it again to resume."""
    with errors():
        s = settings(ctx)
        s.rpc_url = rpc_url or s.rpc_url
        s.keystore = keystore or s.keystore
        s.deployment = deployment or s.deployment
        s.password_file = password_file
        chain = Chain(s.rpc())
        deployer = NetworkDeployer(s.wallet(chain), s.deployment_path(), admin=admin, claim_timeout=claim_timeout,
                                   admin_delay=admin_delay, confirmations=confirmations, timeout=timeout,
                                   report=print)
        plan = deployer.prepare()
        for line in plan.lines():
            print(line)
        if plan.todo:
            plan.require_funds()
            if not yes:
                if not sys.stdin.isatty():
                    raise InputError("not deploying: no terminal to confirm on; pass --yes to deploy without asking")
                if not typer.confirm("send these transactions?", default=False):
                    raise InputError("not deploying: declined")
        dep = deployer.run(plan)
        print(f"deployment written to {deployer.deployment_path}: market {dep.market}, token {dep.token}, "
              f"chain {dep.chain_id}, block {dep.block}")
