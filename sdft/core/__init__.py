"""What every other package stands on: user errors (`errors`), files and JSONL (`jsonl`), the registries' rule
(`registry`), the option machinery the typed configs are built with (`config`), where data and caches live
(`paths`), run locks (`locking`) and the process's rank (`distributed`). Imports nothing else of sdft."""
