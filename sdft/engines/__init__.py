"""Engines: model back-ends, judges and the code sandbox."""
