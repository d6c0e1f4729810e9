#!/bin/sh
# parallelaverage job 1_my_function, launch 2: 4 MPI ranks on this machine
export PYTHONPATH=/home/alice/project:/opt/lib
export PARALLELAVERAGE_LIFE=0
unset PARALLELAVERAGE_END_TIME
/opt/mpich/bin/mpiexec -n 4 /opt/python/bin/python3 -P -m parallelaverage.worker /home/alice/project/.parallelaverage/1_my_function 2 &
child=$!
echo "$child" > /home/alice/project/.parallelaverage/1_my_function/attempts/2/launcher.pid
wait "$child"
code=$?
echo "$code" > /home/alice/project/.parallelaverage/1_my_function/attempts/2/exit_code.tmp && mv -f /home/alice/project/.parallelaverage/1_my_function/attempts/2/exit_code.tmp /home/alice/project/.parallelaverage/1_my_function/attempts/2/exit_code
exit "$code"
