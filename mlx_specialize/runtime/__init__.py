"""What every layer may use and nothing here imports from above: the cache folder and its
entries (`cache.py`), files written whole (`files.py`) and the process group of a run on
several processes or Macs (`distributed.py`), and which code measured a result
(`provenance.py`)."""
