"""The engine of one episode: its spec, building its parts, the episode loop, the judge."""
