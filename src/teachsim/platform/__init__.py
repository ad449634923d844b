"""The engine: config, the episode loop, the judge, runners, the results store."""
