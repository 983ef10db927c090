#!/bin/bash
# A gossip swarm started by torchrun. On one machine (4 peers, ids from RANK, host from MASTER_ADDR):
#   torchrun --standalone --nproc-per-node 4 -m gossip.peer --config configs/mnist_4peers.yaml \
#       --run-dir runs/torchrun topology.hosts=env dashboard.enabled=false
# Across machines torchrun tells no process where the other machines' peers listen, so name them in a
# hostfile (examples/cluster/hostfile.example) and run on each machine (NODE = 0, 1, ...):
#   torchrun --nnodes 2 --node-rank NODE --nproc-per-node 2 --rdzv-backend c10d \
#       --rdzv-endpoint HOST0:29400 -m gossip.peer --config configs/mnist_4peers.yaml \
#       --run-dir runs/torchrun topology.hosts=hostfile:../examples/cluster/hostfile.example
# (the hostfile path is relative to the config's folder, configs/). Ranks are node-major, as the
# hostfile's slots are, so rank r runs on the r-th slot's machine.
set -euo pipefail
exec torchrun --standalone --nproc-per-node "${1:-4}" -m gossip.peer --config configs/mnist_4peers.yaml \
    --run-dir "${2:-runs/torchrun}" topology.hosts=env dashboard.enabled=false
