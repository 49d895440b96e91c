# shellcheck shell=bash
# Sourced by the multinode tests: the tiny runs they train.
#
# mn_write_run KIND WORK STEPS: writes WORK/data (loom_multinode_tool's synthetic data) and WORK/KIND.yaml, a
# tiny GPT or ViT (the models of tests/mpi/parallel_training_harness.cc) on the CPU with a global batch of
# MN_GLOBAL_BATCH, parallel.data = parallel.tensor = 1 (the tests override them), a checkpoint every 5 steps
# and at the end. Prints the config's path. Needs MN_BUILD_DIR.
MN_GLOBAL_BATCH=4
# loom-mpirun options for every MPI job across the simulated hosts. They share this machine's cores, but each
# host's Open MPI daemon sees all of them and believes it is not oversubscribed, so its ranks busy-poll
# without yielding and starve the ranks of the other hosts pinned to the same cores (collectives then take
# tens of milliseconds, and TCP connects between hosts can time out). Real hosts do not need this.
MN_SHARED_CORES=(--mpi -mca --mpi mpi_yield_when_idle --mpi 1)

mn_write_run() {
  local kind="$1" work="$2" steps="$3" config="$2/$1.yaml"
  mkdir -p "$work/data"
  "$MN_BUILD_DIR/loom_multinode_tool" data "$work/data"
  if [ "$kind" = gpt ]; then
    cat >"$config" <<YAML
model: {kind: gpt, n_layer: 2, d_model: 16, n_head: 4, mlp_dim: 32, vocab_size: 64, max_seq_len: 8}
data: {train: '$work/data/tokens_*.bin', seq_len: 8, batch_size: $MN_GLOBAL_BATCH}
YAML
  else
    cat >"$config" <<YAML
model: {kind: vit, n_layer: 2, d_model: 16, n_head: 4, mlp_dim: 32, image_size: 8, patch_size: 4, in_channels: 1, num_classes: 4}
data: {train: '$work/data/images.idx', train_labels: '$work/data/labels.idx', crop_padding: 1, batch_size: $MN_GLOBAL_BATCH}
YAML
  fi
  # eps 1e-6 as in tests/mpi/parallel_training_harness.cc: the key bias's gradient is rounding noise that a
  # tiny eps would turn into full-size, layout-dependent steps.
  cat >>"$config" <<YAML
optim: {lr: 0.01, warmup_steps: 3, weight_decay: 0.1, grad_clip: 1.0, eps: 1.0e-6}
train: {max_steps: $steps, device: cpu, progress: false, log_every: 0, sample_every: 0, seed: 7, checkpoint_every: 5}
parallel:
  data: 1
  tensor: 1
  bucket_mb: 1
  comm_tiles: 2
YAML
  echo "$config"
}

# mn_hostfile FILE HOSTS SLOTS: host0 .. host(HOSTS-1), SLOTS slots each.
mn_hostfile() {
  local i
  : >"$1"
  for ((i = 0; i < $2; i++)); do echo "host$i slots=$3" >>"$1"; done
}

# The controller's fault tests (fault_test.sh, controller_restart_test.sh) and their references
# (elastic_reference.sh): MN_STEPS steps, the fault lands while the job is paused after step MN_PAUSE_STEP,
# so the last complete checkpoint is that of step MN_FAULT_CHECKPOINT (checkpoint_every 5).
MN_STEPS=20
MN_PAUSE_STEP=12
MN_FAULT_CHECKPOINT=10

# mn_write_elastic_run WORK: mn_write_run's GPT run of MN_STEPS steps whose data-parallel size the controller
# may halve (parallel.elastic.min_data 2). Prints the config's path.
mn_write_elastic_run() {
  local config
  config="$(mn_write_run gpt "$1" "$MN_STEPS")"
  echo "  elastic: {min_data: 2}" >>"$config"
  echo "$config"
}
