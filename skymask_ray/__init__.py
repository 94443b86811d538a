"""skymask-ray: Ray-distributed simulation of Byzantine-robust federated learning around SkyMask.

Layers, bottom to top; a module imports only from its own layer or below
(``tests/test_layers.py`` checks this and that there are no import cycles):

0. errors, registry, seeding, params, storage, linalg, kernels (implementations chosen by timing them),
   progress, markdown, procfs (this process's and machine's memory): no domain knowledge
1. config (typed dataclasses, no registries), ray_session (starting or joining Ray), nodes (the
   cluster's nodes and their CUDA probe), layout (the trainer's bundle and the client workers per
   node), actors (restartable actors' arguments and failures), local_nodes (the autoscaler's node
   provider of the one-machine cluster), models, results (the round row), population (cohorts,
   dropouts), run_folder (a run's files), context (what an attack / a defense may read)
2. data (datasets, partitions, seeded clients), evaluation
3. clients (local training, the client pool), skymask (masks, the trainer actor, the server
   service), attacks, defenses: each family in a registry
4. experiment (a config checked against the registries), simulation (the round loop),
   recorders (rows, masks, checkpoints as round callbacks), preflight (a run's memory, estimated
   before Ray starts)
5. tables (a study's tables from its rows), study (a study file: cells, narrowing, its rows), bench
   (running a study's cells), pages (a study's section, the results page), report (plots)
6. cli
"""

__version__ = "0.1.0"
