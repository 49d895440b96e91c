// loom: the command-line tool.
//   loom train CONFIG.yaml [key.sub=value ...]    train as configured (overrides after the file); under the job
//                                                 controller (LOOM_CONTROLLER_ADDRESS set) it registers,
//                                                 heartbeats, reports metrics and obeys controls (launch/README.md)
//   loom config CONFIG.yaml [key.sub=value ...]   print the resolved config: every field, its value or default,
//                                                 and one line of help from core/config.proto
//   loom prepare --vocab DIR --out DIR INPUT...   tokenize text files/folders (--glob '*.md') into llm.c token
//                                                 shards
//   loom sample --checkpoint DIR [--prompt TEXT]  continue a prompt with a trained GPT
//   loom export-hf --checkpoint DIR --out DIR     a folder GPT2LMHeadModel.from_pretrained loads (Hugging Face
//                                                 GPT-2 names, config.json, the tokenizer)
//   loom export-timm --checkpoint DIR --out DIR   a ViT/DeiT checkpoint in timm's names with timm's config.json
//   loom export --checkpoint DIR --out DIR        write a checkpoint's weights in this project's layout plus a
//                                                 YAML model section (any widths, e.g. a pruned model)
//   loom dashboard [RUN_DIR ...]                  live charts of run folders in the browser (launch/dashboard_server.h)
//   loom plot RUN_DIR... --out curves.png         loss, MFU, throughput and learning rate of runs as a picture
//   loom latency-table CONFIG.yaml [key=value ...] --out FILE
//                                                 time one transformer block over the prune.latency_grid widths
//                                                 on this machine's device (trainer/pruning/latency_table.h)
// Every error is printed as "loom: error: ..." naming the file or field, with exit status 1.
#include <CLI/CLI.hpp>

#include <iostream>

#include "core/config.h"
#include "core/text_corpus.h"
#include "core/tokenizer.h"
#include "launch/checkpoint_commands.h"
#include "launch/dashboard_commands.h"
#include "launch/worker_client.h"
#include "parallel/environment.h"
#include "parallel/mpi_communicator.h"
#include "trainer/pruning/latency_table.h"
#include "trainer/pruning/prune_config.h"
#include "trainer/run.h"

namespace {

using namespace loom;

int cmd_train(const std::string& config_path, const std::vector<std::string>& overrides) {
  const ProcessEnvironment env = detect_process_environment();
  config::RunConfig cfg;
  if (env.world_size > 1) {
    // Every rank reads the config; they agree on its errors (and on the layout), so one line reports them.
    init_mpi();
    auto world = MpiCommunicator::world();
    agree_on_failure(*world, [&] {
      cfg = load_run_config(config_path, overrides);
      const int64_t ranks = static_cast<int64_t>(cfg.parallel().data()) * cfg.parallel().tensor();
      if (ranks != world->size())
        fail("parallel.data (", cfg.parallel().data(), ") x parallel.tensor (", cfg.parallel().tensor(),
             ") must equal the number of processes (", world->size(), "; start them with launch/loom-mpirun --np ",
             ranks, ")");
    });
  } else {
    cfg = load_run_config(config_path, overrides);
  }
  std::unique_ptr<WorkerClient> worker;
  std::vector<TrainingObserver*> observers;
  if (const auto settings = worker_settings_from_environment()) {
    worker = std::make_unique<WorkerClient>(*settings, env, select_device(cfg.train()));
    observers.push_back(worker.get());
  }
  const TrainResult r = run_training(cfg, std::cout, observers);
  if (env.rank != 0) return 0;  // world rank 0 speaks for the job
  std::cout << "done: " << r.steps_done << " steps, train loss " << r.last_train_loss;
  if (r.last_val_loss >= 0) std::cout << ", val loss " << r.last_val_loss;
  if (r.last_val_accuracy >= 0) std::cout << ", val accuracy " << r.last_val_accuracy;
  if (!r.last_checkpoint.empty()) std::cout << ", checkpoint " << r.last_checkpoint;
  std::cout << std::endl;
  return 0;
}

int cmd_config(const std::string& config_path, const std::vector<std::string>& overrides) {
  std::cout << run_config_reference(load_run_config(config_path, overrides));
  return 0;
}

int cmd_prepare(const std::string& vocab, const std::string& out, const std::vector<std::string>& inputs,
                const TextCorpusOptions& options) {
  const Tokenizer tok = Tokenizer::from_dir(vocab);
  const TextCorpusSummary s = prepare_text_corpus(inputs, out, tok, options);
  std::cout << "prepared " << s.documents << " documents: " << s.train_tokens << " train tokens in "
            << s.train_shards.size() << " shard(s), " << s.val_tokens << " val tokens in " << s.val_shards.size()
            << " shard(s), in " << out << std::endl;
  if (s.split_by_tokens)
    std::cout << "(fewer documents than 1 / --val-fraction: validation is the last " << s.val_tokens
              << " tokens of the text, not whole documents)" << std::endl;
  return 0;
}

int cmd_latency_table(const std::string& config_path, const std::vector<std::string>& overrides,
                      const std::string& out) {
  const config::RunConfig cfg = load_run_config(config_path, overrides);
  auto backend = make_run_backend(select_device(cfg.train()), cfg);
  const LatencyTable table = build_latency_table(cfg, *backend, &std::cout);
  table.save(out);
  std::cout << "wrote " << out << ": " << table.grid().points() << " block shapes on " << table.key().device << " ("
            << table.key().dtype << ", batch " << table.key().batch << ", " << table.key().tokens << " tokens, "
            << latency_mode_name(table.key().mode) << "); the unpruned model is predicted at "
            << [&] {
                 const ModelShape shape = resolve_model_shape(cfg);  // a pruning config's widths: model.init_from
                 return table.model_ms(shape.d_model, shape.blocks);
               }()
            << " ms" << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"loom: train GPT and ViT models on CPUs and GPUs"};
  app.require_subcommand(1);

  std::string config_path;
  std::vector<std::string> overrides;
  auto* train = app.add_subcommand("train", "train a model from a YAML config");
  train->add_option("config", config_path, "YAML config file")->required();
  train->add_option("overrides", overrides, "key.sub=value overrides of config fields");

  auto* show_config = app.add_subcommand("config", "print the resolved config with every default and its help");
  show_config->add_option("config", config_path, "YAML config file")->required();
  show_config->add_option("overrides", overrides, "key.sub=value overrides of config fields");

  std::string vocab = "data/gpt2", out_dir;
  std::vector<std::string> inputs, globs;
  TextCorpusOptions corpus;
  auto* prepare = app.add_subcommand("prepare", "tokenize text files into token shards");
  prepare->add_option("--vocab", vocab, "folder with GPT-2's encoder.json and vocab.bpe");
  prepare->add_option("--out", out_dir, "output folder for train_*.bin and val_*.bin")->required();
  prepare->add_option("--val-fraction", corpus.val_fraction,
                      "share of documents for validation (of the tokens, with fewer than 1/fraction documents)");
  prepare->add_option("--shard-tokens", corpus.shard_tokens, "tokens per shard file");
  prepare->add_option("--max-files", corpus.max_files, "use only the first N files (0: all)");
  prepare->add_option("--glob", globs, "file names read in folders, e.g. --glob '*.md' --glob '*.rst' (default *.txt)");
  prepare->add_option("inputs", inputs, "text files, or folders (searched recursively, see --glob)")->required();

  std::string checkpoint, prompt, out_file;
  int64_t tokens = 64, top_k = 40;
  double temperature = 1.0;
  uint64_t seed = 1;
  auto* sample = app.add_subcommand("sample", "continue a prompt with a trained GPT checkpoint");
  sample->add_option("--checkpoint", checkpoint, "checkpoint directory")->required();
  sample->add_option("--prompt", prompt, "text to continue (default: a new document)");
  sample->add_option("--tokens", tokens, "tokens to generate");
  sample->add_option("--temperature", temperature, "softmax temperature (0: greedy)");
  sample->add_option("--top-k", top_k, "sample among the k most likely tokens (0: all)");
  sample->add_option("--seed", seed, "random seed");

  auto* export_hf = app.add_subcommand("export-hf", "export a GPT for Hugging Face transformers (GPT2LMHeadModel)");
  export_hf->add_option("--checkpoint", checkpoint, "checkpoint directory")->required();
  export_hf->add_option("--out", out_file, "output folder (model.safetensors, config.json, tokenizer)")->required();
  auto* export_timm = app.add_subcommand("export-timm", "export a ViT/DeiT for timm");
  export_timm->add_option("--checkpoint", checkpoint, "checkpoint directory")->required();
  export_timm->add_option("--out", out_file, "output folder (model.safetensors, config.json)")->required();

  std::string export_dir;
  auto* export_own = app.add_subcommand("export", "export a checkpoint's weights and model section (any widths)");
  export_own->add_option("--checkpoint", checkpoint, "checkpoint directory")->required();
  export_own->add_option("--out", export_dir, "output folder (model.safetensors, model.yaml)")->required();
  std::string table_config, table_out;
  std::vector<std::string> table_overrides;
  auto* latency_table = app.add_subcommand("latency-table", "time one transformer block over a grid of widths");
  latency_table->add_option("config", table_config, "YAML config file (its prune: section sets the grid)")->required();
  latency_table->add_option("overrides", table_overrides, "key.sub=value overrides of config fields");
  latency_table->add_option("--out", table_out, "output table (.json)")->required();

  std::vector<std::string> run_dirs;
  std::string dashboard_host = "127.0.0.1", ready_file;
  int dashboard_port = 8080;
  FrontEndFiles front_end = default_front_end_files();
  auto* dashboard = app.add_subcommand("dashboard", "serve live charts of run folders (their metrics.jsonl)");
  dashboard->add_option("run_dirs", run_dirs, "run folders (train.out_dir; default: those in runs/)");
  dashboard->add_option("--host", dashboard_host, "address to listen on (no authentication: keep it local)");
  dashboard->add_option("--port", dashboard_port, "port (0: any free one)");
  dashboard->add_option("--ready-file", ready_file, "write the port here once serving");
  PlotOptions plot_options;
  auto* plot = app.add_subcommand("plot", "draw runs' loss, MFU, throughput and learning rate into a PNG");
  plot->add_option("run_dirs", run_dirs, "run folders (train.out_dir)")->required();
  plot->add_option("--out", plot_options.out, "the PNG to write")->required();
  plot->add_option("--width", plot_options.width, "picture width in pixels");
  plot->add_option("--height", plot_options.height, "picture height in pixels");
  plot->add_option("--smoothing", plot_options.smoothing, "moving-average weight in [0, 1), as on the dashboard");
  plot->add_option("--chromium", plot_options.chromium, "the headless browser that draws it");
  for (CLI::App* sub : {dashboard, plot}) {
    sub->add_option("--static-dir", front_end.static_dir, "the dashboard's page (launch/dashboard)");
    sub->add_option("--vendor-dir", front_end.vendor_dir, "uPlot's dist folder (scripts/setup.sh installs it)");
  }

  CLI11_PARSE(app, argc, argv);
  try {
    if (train->parsed()) return cmd_train(config_path, overrides);
    if (show_config->parsed()) return cmd_config(config_path, overrides);
    if (prepare->parsed()) {
      if (!globs.empty()) corpus.patterns = globs;
      return cmd_prepare(vocab, out_dir, inputs, corpus);
    }
    if (sample->parsed()) return cmd_sample(checkpoint, prompt, tokens, temperature, top_k, seed);
    if (export_hf->parsed()) return cmd_export_hf(checkpoint, out_file);
    if (export_timm->parsed()) return cmd_export_timm(checkpoint, out_file);
    if (export_own->parsed()) return cmd_export(checkpoint, export_dir);
    if (dashboard->parsed()) return cmd_dashboard(run_dirs, dashboard_host, dashboard_port, front_end, ready_file);
    if (plot->parsed()) return cmd_plot(run_dirs, plot_options, front_end);
    if (latency_table->parsed()) return cmd_latency_table(table_config, table_overrides, table_out);
  } catch (const JobWideError& e) {
    // Every rank of the job has this error: world rank 0 prints it.
    if (detect_process_environment().rank == 0) std::cerr << "loom: error: " << e.what() << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "loom: error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
