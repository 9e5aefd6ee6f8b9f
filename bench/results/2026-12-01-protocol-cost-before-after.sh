#!/bin/bash
# issue 16.5: make reproduce's quick profile before (6756726, before issue 12's protocol) and after (HEAD), side by side
V=/work/main/.venv/bin/python
run() {  # $1 tree
  cd $1 && date -u +%FT%TZ > repro.start
  OMP_NUM_THREADS=1 PYTHONPATH=$1 /usr/bin/time -v $V -m ctrkit.cli reproduce --dataset both --profile quick --out results --figures figs > repro.out 2> repro.err
  echo $? > repro.rc; date -u +%FT%TZ > repro.end
}
run /tmp/repro_old &
run /tmp/repro_new &
wait
date > /tmp/fb/repro.done
