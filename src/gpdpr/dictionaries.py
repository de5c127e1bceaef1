"""Dictionary-encoded text columns as they are written to a file: only the entries rows use.

Filtering rows out of a dictionary-encoded column leaves its dictionary whole, and the Parquet
writer writes a dictionary as given. A value no row holds any more (a restricted code the
extractor left out, the pseudonym of a person opted out or erased) would still be in the file.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def used_only(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The column with only the dictionary entries its rows use (the same values)."""
    if isinstance(values, pa.ChunkedArray):
        return pa.chunked_array([used_only(c) for c in values.chunks], values.type)
    indices = values.indices.fill_null(0).to_numpy(zero_copy_only=False)
    valid = values.indices.is_valid().to_numpy(zero_copy_only=False)
    used = np.zeros(len(values.dictionary), bool)
    used[indices[valid]] = True
    if used.all():
        return values
    renumber = (np.cumsum(used) - 1).astype(indices.dtype)
    kept = pa.array(renumber[np.where(valid, indices, 0)], values.type.index_type, mask=~valid)
    dictionary = values.dictionary.filter(pa.array(used))
    return pa.DictionaryArray.from_arrays(kept, dictionary)


def table_used_only(data: pa.Table) -> pa.Table:
    """Every dictionary column of the table with only the entries its rows use."""
    for i, f in enumerate(data.schema):
        if pa.types.is_dictionary(f.type):
            data = data.set_column(i, f, used_only(data.column(i)))
    return data
