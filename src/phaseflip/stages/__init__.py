"""One module per stage, each with one `run(params, ...)`: read the stage's inputs, call the library, write.

The decisions live in the library (`prepare`, `interventions`, `measure`, `forecast`, `report`); a stage
module only reads its params and files and writes its outputs atomically. The table of stages is
`phaseflip.dag.STAGES`; `phaseflip.cli` parses a stage's arguments and calls its `run`.
"""
