"""The query language, where researchers import it from: `from gpdpr.tre.language import *`.

It lives in `gpdpr.tre.query.language` with the rest of the query model; this is its public name.
"""

from gpdpr.tre.query.language import *  # noqa: F403
from gpdpr.tre.query.language import __all__ as __all__
