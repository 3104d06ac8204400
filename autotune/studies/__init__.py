"""Studies: reproducible evidence. A study directory (``studies/<name>/``) holds a definition
(``study.toml``, see ``definition``), the results of its parts (``results/<part>.json``, written
by ``runner`` as each part finishes) and the report made from them (``report``)."""
