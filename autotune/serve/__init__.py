"""``autotune serve``: the cache runtime behind an OpenAI-compatible HTTP API.

``launch`` resolves the config (flags, a JSON file, or the stored winner) and runs the server;
``session`` owns the engine and generates one sequence at a time; ``text`` turns tokens into
the text that may be sent so far; ``chat`` renders messages; ``app`` holds the routes.
"""
