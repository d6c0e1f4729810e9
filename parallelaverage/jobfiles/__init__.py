"""The files of a job folder: the contract between the caller and the MPI ranks.

The caller writes what a launch needs (``layout``: the folder's paths, the launch plan
and its creator; ``payload``: the function and its arguments); the ranks write what
they did (``rankstatus``: each rank's memory-mapped status record; ``tally``: the runs
done and failed and their statistics, as snapshots and results; ``outputs``: kept
outputs); every pickle is read through ``trust``. Both sides import this package and
nothing of each other: the ranks never import the decorators, the job database or the
backends, and the caller reads the ranks' work only through these formats.
"""
