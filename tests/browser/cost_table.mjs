// Replaces the timings of a latency table `loom latency-table` wrote with a cost proportional to each block's
// work, keeping its key, grid and format (the same cost as tests/common/model_testing.h's
// multilinear_latency_table): on a loaded CI machine, real timings of the tests' tiny blocks are noise, and a
// noisy floor above the target refuses the run. tests/unit/pruning_latency_table_test.cc times real tables.
import { readFileSync, writeFileSync } from "node:fs";

export function replaceTimingsWithWorkCost(tablePath) {
  const table = JSON.parse(readFileSync(tablePath, "utf8"));
  const g = table.grid;
  table.block_ms = [];
  for (const E of g.embedding)
    for (const H of g.heads)
      for (const Q of g.qk_dim)
        for (const V of g.v_dim)
          for (const M of g.mlp) table.block_ms.push(1e-2 * (E * H * (2 * Q + V) + 2 * E * M) + 0.05);
  table.fixed_ms = g.embedding.map(E => 0.01 * E);
  writeFileSync(tablePath, JSON.stringify(table));
}
