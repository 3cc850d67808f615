"""The batch adapter: score files and tables in chunks, resumably, on a schedule or on Ray.

A job reads its input in chunks of rows, sends each through the same validation, predictor and
prediction records as realtime (mode ``batch``), and checkpoints each finished chunk as a Parquet
part in its work folder. Only when every chunk is done are the parts assembled into the output, in
one step that a reader never sees half-done (a rename, or one database transaction).
"""
