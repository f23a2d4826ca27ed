"""``dsq index run`` and ``dsq dashboard``: the index service and the dashboard it feeds."""

from __future__ import annotations

import logging
import threading
from typing import Annotated

import typer

from dsq_chain.cli.common import errors, settings
from dsq_chain.errors import InputError
from dsq_chain.services.index import DEFAULT_URL, IndexReader, IndexService

index_app = typer.Typer(no_args_is_help=True, help="The index of every job, provider and status change.")

DB = Annotated[str, typer.Option("--db", help="sqlite:///FILE or postgresql://USER@HOST:PORT/DB (env DSQ_INDEX_DB)",
                                 envvar="DSQ_INDEX_DB")]


@index_app.command("run")
def index_run(
    ctx: typer.Context,
    db: DB = DEFAULT_URL,
    confirmations: Annotated[int, typer.Option(help="blocks an event must be deep before it is indexed")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Builds the index from the chain and keeps it up to date until interrupted (SIGINT/SIGTERM)."""
    from dsq_chain.cli.services import LOG_FORMAT, _stop_on_signals

    with errors():
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
        chain, dep = settings(ctx).chain()
        service = IndexService(chain, dep, db, confirmations=confirmations)
        logging.getLogger("dsq.index").info("indexing market %s from %s into %s", dep.market, chain.rpc_url,
                                            service.engine.url.render_as_string(hide_password=True))
        service.run(_stop_on_signals())


def parse_log_servers(items: list[str]) -> dict[str, str]:
    """``PROVIDER=URL`` pairs (repeatable option) as a map; a clear error for anything else."""
    from eth_utils.address import is_address, to_checksum_address

    out: dict[str, str] = {}
    for item in items:
        provider, sep, url = item.partition("=")
        if not sep or not is_address(provider) or not url.startswith(("http://", "https://")):
            raise InputError(f"--log-server expects PROVIDER=URL (0x address = http://host:port), got {item!r}")
        out[to_checksum_address(provider)] = url.rstrip("/")
    return out


def register(app: typer.Typer) -> None:
    @app.command()
    def dashboard(
        ctx: typer.Context,
        port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 8080,
        db: DB = DEFAULT_URL,
        log_server: Annotated[list[str] | None, typer.Option(
            "--log-server", help="PROVIDER=URL of a provider's log server (repeatable)")] = None,
        index: Annotated[bool, typer.Option(
            "--index/--no-index", help="also keep the index up to date from the chain (like `dsq index run`)")] = False,
    ) -> None:
        """Serves the dashboard and the console API (/api/v1) from the index. Holds no key."""
        import uvicorn

        from dsq_chain.web.app import DashboardConfig, create_app

        with errors():
            servers = parse_log_servers(log_server or [])
            stop = threading.Event()
            if index:
                chain, dep = settings(ctx).chain()
                service = IndexService(chain, dep, db)
                threading.Thread(target=service.run, args=(stop,), name="dsq-index", daemon=True).start()
            app = create_app(IndexReader(db), DashboardConfig(log_servers=servers))
            print(f"dashboard at http://127.0.0.1:{port}/ (API: http://127.0.0.1:{port}/api/v1/docs)", flush=True)
            try:
                uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
            finally:
                stop.set()
