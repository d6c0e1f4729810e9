"""Queue backends: how a job's MPI ranks get started (local ``mpiexec``, SLURM)."""
