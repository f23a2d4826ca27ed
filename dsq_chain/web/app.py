"""The dashboard and the console sync API: one ASGI app that reads the index.

It holds no key and sends no transaction. ``/api/v1/...`` is the versioned JSON API (OpenAPI at
``/api/v1/openapi.json``, browsable at ``/api/v1/docs``); ``/``, ``/jobs/{id}``, ``/providers`` and
``/market`` are the pages, which update themselves from the API's server-sent events.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from eth_utils.address import is_address, to_checksum_address
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from dsq_chain import lifecycle
from dsq_chain.errors import InputError
from dsq_chain.services.index import IndexReader
from dsq_chain.types import CREDIT_UNIT, JobStatus
from dsq_chain.web import sse
from dsq_chain.workloads.lease import decode_owner, encode_owner

HERE = Path(__file__).resolve().parent
API = "/api/v1"
#: Chart.js as npm installs it from the committed lock file (``make setup``); DSQ_CHARTJS overrides.
CHARTJS = Path("node_modules/chart.js/dist/chart.umd.min.js")


@dataclass
class DashboardConfig:
    """What the dashboard needs besides the index: where providers serve their logs (provider -> URL)."""

    log_servers: dict[str, str] = field(default_factory=dict)
    title: str = "dsq-chain"


def chartjs_path() -> Path | None:
    """The vendored Chart.js: $DSQ_CHARTJS, else node_modules of the checkout or of the current folder."""
    candidates = [Path(os.environ["DSQ_CHARTJS"])] if os.environ.get("DSQ_CHARTJS") else []
    candidates += [HERE.parents[1] / CHARTJS, Path.cwd() / CHARTJS]
    return next((p for p in candidates if p.is_file()), None)


def _address(value: str, what: str) -> str:
    if not is_address(value):
        raise HTTPException(422, f"{what} must be a 0x-prefixed 20-byte hex address, got {value[:60]!r}")
    return to_checksum_address(value)


def _lease_owner(value: str) -> str:
    """An Akash owner as the index stores it (``akash1...``), from itself or its 0x hex account bytes."""
    try:
        return encode_owner(decode_owner(value))
    except InputError as e:
        raise HTTPException(422, f"owner: {e}") from None


def _status(value: str | None) -> JobStatus | None:
    if not value:
        return None
    try:
        return JobStatus[value.upper().replace("-", "_")]
    except KeyError:
        names = ", ".join(s.name for s in JobStatus if s)
        raise HTTPException(422, f"status must be one of {names}, got {value[:40]!r}") from None


Limit = Annotated[int, Query(ge=1, le=500, description="at most this many jobs, newest first")]
Before = Annotated[int | None, Query(ge=0, description="only jobs with a smaller id (paging)")]
JobId = Annotated[int, PathParam(ge=0, le=2**255, description="job id")]


def api_router(reader: IndexReader, config: DashboardConfig) -> APIRouter:
    r = APIRouter(prefix=API)

    def one_job(job_id: int) -> dict[str, Any]:
        job = reader.job(job_id)
        if job is None:
            raise HTTPException(404, f"job {job_id} is not in the index")
        job["log_server"] = config.log_servers.get(job["provider"] or "")
        return job

    @r.get("/head", summary="Where the index stands", tags=["index"])
    def head() -> dict[str, Any]:
        return reader.head()

    @r.get("/jobs", summary="Jobs, filtered", tags=["jobs"])
    def jobs(owner: str | None = None, provider: str | None = None, status: str | None = None,
             limit: Limit = 50, before: Before = None) -> dict[str, Any]:
        rows = reader.jobs(owner=_address(owner, "owner") if owner else None,
                           provider=_address(provider, "provider") if provider else None,
                           status=_status(status), limit=limit, before=before)
        return {"jobs": rows, "next_before": rows[-1]["id"] if len(rows) == limit else None}

    @r.get("/owners/{owner}/jobs", summary="Jobs of an owner", tags=["jobs"])
    def jobs_of_owner(owner: str, status: str | None = None, limit: Limit = 50,
                      before: Before = None) -> dict[str, Any]:
        return jobs(owner=owner, status=status, limit=limit, before=before)

    @r.get("/providers/{provider}/jobs", summary="Jobs placed on a provider", tags=["jobs"])
    def jobs_of_provider(provider: str, status: str | None = None, limit: Limit = 50,
                         before: Before = None) -> dict[str, Any]:
        return jobs(provider=provider, status=status, limit=limit, before=before)

    @r.get("/leases/{owner}/{dseq}/jobs", summary="Jobs of an external lease (Akash owner + dseq)", tags=["jobs"])
    def jobs_of_lease(owner: str, dseq: Annotated[int, PathParam(ge=0, le=2**64 - 1)],
                      limit: Limit = 50) -> dict[str, Any]:
        rows = reader.jobs(lease_owner=_lease_owner(owner), lease_dseq=str(dseq), limit=limit)
        return {"jobs": rows, "next_before": None}

    @r.get("/jobs/{job_id}", summary="One job with its timeline and bill", tags=["jobs"])
    def job(job_id: JobId) -> dict[str, Any]:
        return one_job(job_id)

    @r.get("/jobs/{job_id}/explain", summary="Why a job waits, provider by provider", tags=["jobs"])
    def explain(job_id: JobId) -> dict[str, Any]:
        one_job(job_id)
        return reader.explain_view(job_id)

    @r.get("/jobs/{job_id}/events", summary="Server-sent events: the job each time it changes", tags=["live"],
           response_class=StreamingResponse)
    def job_events(job_id: JobId, request: Request) -> StreamingResponse:
        one_job(job_id)

        def detail(_: dict[str, Any]) -> dict[str, Any] | None:
            return reader.job(job_id)

        return _stream(sse.job_changes(request, reader, lambda j: j["id"] == job_id, detail))

    @r.get("/events", summary="Server-sent events: every changed job matching the filters", tags=["live"],
           response_class=StreamingResponse)
    def events(request: Request, owner: str | None = None, provider: str | None = None,
               status: str | None = None) -> StreamingResponse:
        o = _address(owner, "owner") if owner else None
        p = _address(provider, "provider") if provider else None
        st = _status(status)

        def wanted(j: dict[str, Any]) -> bool:
            return ((o is None or j["owner"] == o) and (p is None or j["provider"] == p)
                    and (st is None or j["status"] == st.name))

        return _stream(sse.job_changes(request, reader, wanted))

    @r.get("/providers", summary="Providers: status, labels, prices, capacity, jobs run, earnings", tags=["providers"])
    def providers() -> dict[str, Any]:
        return {"providers": reader.providers()}

    @r.get("/providers/{provider}", summary="One provider", tags=["providers"])
    def provider(provider: str) -> dict[str, Any]:
        p = reader.provider(_address(provider, "provider"))
        if p is None:
            raise HTTPException(404, f"provider {provider} is not in the index")
        return p

    @r.get("/market", summary="Jobs per hour, utilisation, wait p50/p95, placement failures", tags=["market"])
    def market(hours: Annotated[int, Query(ge=1, le=24 * 31)] = 24) -> dict[str, Any]:
        return reader.market(hours)

    return r


def _stream(gen: Any) -> StreamingResponse:
    return StreamingResponse(gen, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def credits(units: int | None) -> str:
    """Credit units as a human amount (6 decimals, trailing zeros dropped)."""
    if units is None:
        return "-"
    whole, frac = divmod(int(units), CREDIT_UNIT)
    return f"{whole}.{frac:06d}".rstrip("0").rstrip(".") if frac else str(whole)


def create_app(reader: IndexReader, config: DashboardConfig | None = None) -> FastAPI:
    """The dashboard app on ``reader``'s index."""
    config = config or DashboardConfig()
    app = FastAPI(title="dsq-chain console API", version="1.0.0", openapi_url=f"{API}/openapi.json",
                  docs_url=f"{API}/docs", redoc_url=None,
                  description="Read-only view of a dsq-chain grid's index: jobs, providers, market, live events.")
    app.include_router(api_router(reader, config))
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["credits"] = credits
    templates.env.globals["title"] = config.title
    # The page's script learns which statuses are final from the one lifecycle table, not a copy of it.
    templates.env.globals["final_statuses"] = sorted(s.name for s in lifecycle.FINAL)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.exception_handler(HTTPException)
    async def _errors(request: Request, exc: HTTPException) -> Any:
        if request.url.path.startswith(API):
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        return HTMLResponse(templates.get_template("error.html").render(request=request, error=exc.detail,
                                                                         status=exc.status_code),
                            status_code=exc.status_code)

    @app.get("/vendor/chart.umd.min.js", include_in_schema=False)
    def chartjs() -> Any:
        path = chartjs_path()
        if path is None:
            raise HTTPException(404, "Chart.js is not installed: run `make setup` (npm ci) in the checkout")
        return FileResponse(path, media_type="text/javascript")

    def page(request: Request, name: str, head: dict[str, Any] | None = None, **ctx: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"api": API, "head": head or reader.head(), **ctx})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def jobs_page(request: Request, owner: str | None = None, provider: str | None = None,
                  status: str | None = None) -> HTMLResponse:
        filters = {"owner": _address(owner, "owner") if owner else "",
                   "provider": _address(provider, "provider") if provider else "",
                   "status": _status(status).name if status else ""}  # type: ignore[union-attr]
        rows = reader.jobs(owner=filters["owner"] or None, provider=filters["provider"] or None,
                           status=_status(status), limit=100)
        return page(request, "jobs.html", jobs=rows, filters=filters, statuses=[s.name for s in JobStatus if s])

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(request: Request, job_id: JobId) -> HTMLResponse:
        head = reader.head()
        job = reader.job(job_id, reader.now(head))
        if job is None:
            raise HTTPException(404, f"job {job_id} is not in the index")
        log_server = config.log_servers.get(job["provider"] or "")
        # Only a waiting job has a reason to show (the page asks again when its job goes back to PENDING).
        explain = reader.explain_view(job_id) if job["status"] == "PENDING" else {"waiting": False, "providers": []}
        return page(request, "job.html", head, job=job, explain=explain, log_server=log_server)

    @app.get("/providers", response_class=HTMLResponse, include_in_schema=False)
    def providers_page(request: Request) -> HTMLResponse:
        return page(request, "providers.html", providers=reader.providers())

    @app.get("/market", response_class=HTMLResponse, include_in_schema=False)
    def market_page(request: Request) -> HTMLResponse:
        return page(request, "market.html", market=reader.market(24))

    return app
