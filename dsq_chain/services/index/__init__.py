"""The index: every job, provider, status change, bill, top-up and assignment, in SQLite or PostgreSQL.

:class:`IndexService` builds it from the chain with the reorg-safe follower; :class:`IndexReader`
answers the dashboard's and the console API's questions from it.
"""

from dsq_chain.services.index.reader import IndexReader
from dsq_chain.services.index.service import DEFAULT_URL, IndexService, make_engine

__all__ = ["DEFAULT_URL", "IndexReader", "IndexService", "make_engine"]
