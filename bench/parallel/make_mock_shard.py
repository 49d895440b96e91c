"""Writes a token shard in Loom's (llm.c's) format for throughput runs that need no corpus: a header of 256
int32 (magic 20240520, version 1, token count), then uint16 tokens.

The tokens follow a random sparse bigram chain (each of 4096 active GPT-2 ids is followed by one of 8 fixed
successors, with fixed probabilities), so a model can learn it and loss curves of different layouts are
comparable (uniform random tokens would sit at ln 50257 throughout). Generated as 10,000 independent chains
stepped together (vectorised), then concatenated."""
import sys
import numpy as np

path, count = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
active, fanout, chains = 4096, 8, 10_000
ids = rng.choice(50257, size=active, replace=False).astype(np.uint16)
successors = rng.integers(0, active, size=(active, fanout))
probs = rng.dirichlet(np.ones(fanout))
length = -(-count // chains)
state = rng.integers(0, active, size=chains)
walk = np.empty((chains, length), dtype=np.int64)
for step in range(length):
    walk[:, step] = state
    state = successors[state, rng.choice(fanout, size=chains, p=probs)]
tokens = ids[walk.reshape(-1)[:count]]
header = np.zeros(256, dtype=np.int32)
header[:3] = (20240520, 1, count)
with open(path, "wb") as f:
    f.write(header.tobytes())
    f.write(tokens.tobytes())
