/* main.c: the mlmpi-train executable: its subcommands, and for training the
 * process's start-up: the communicator (comm.backend) over the job's ranks,
 * the compute threads a rank owns, the signals that stop a run cleanly, and
 * the one place where a status becomes an exit code or the end of the
 * whole job. */
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "run.h"

static const char usage[] =
    "usage: mlmpi-train [--config FILE] [--set section.key=value ...] [--init-from CKPT]\n"
    "       mlmpi-train <command> [options]\n"
    "\n"
    "Without a command: data-parallel pretraining (run it under mpirun or srun, or alone);\n"
    "`mlmpi-train --help-config` lists every config key.\n"
    "\n"
    "commands:\n"
    "  step   one forward+backward of a model on given weights and batch (the oracle hook)\n"
    "  demo   initialise a model and train it on a synthetic batch, printing the loss\n"
    "  export a checkpoint as a Hugging Face model directory (model.safetensors, config.json)\n"
    "  finetune  fine-tune a pretrained model (or a fresh one) on a labelled task, under mpirun\n"
    "            like pretraining (`mlmpi-train finetune --help` lists its keys)\n"
    "  predict   a fine-tuned checkpoint's labels and class probabilities for a JSON Lines file\n"
    "  generate  a GPT-2 checkpoint's continuation of a prompt (greedy or sampled)\n"
    "\n"
    "`mlmpi-train <command> --help` describes each command.\n";

static const char train_usage[] =
    "usage: mlmpi-train [--config FILE] [--set section.key=value ...] [--init-from CKPT]\n"
    "       mlmpi-train step|demo ... (see mlmpi-train --help)\n"
    "\n"
    "Trains under mpirun/srun (or as one process). Config keys (INI sections) and defaults:\n";

static const char finetune_usage[] =
    "usage: mlmpi-train finetune [--config FT.ini] [--set section.key=value ...]\n"
    "\n"
    "Fine-tunes a sequence classifier (BertForSequenceClassification or\n"
    "ElectraForSequenceClassification) under mpirun/srun (or as one process): the pretraining\n"
    "keys below, with AdamW (lr 1e-4, 10% warmup, linear decay, eps 1e-8) and these:\n"
    "[model]  init = DIR (a pretraining checkpoint, step-N or its ckpt.dir, or a Hugging Face\n"
    "         directory; unset: fresh weights from model.preset / model.config, the control)\n"
    "[task]   type = classify, train = FILE.jsonl, dev = FILE.jsonl (evaluated after every\n"
    "         epoch: dev_accuracy and dev_macro_f1 in metrics.jsonl; the best epoch's model is\n"
    "         kept in ckpt.dir/best), text_field = text, pair_field = (none: single texts),\n"
    "         label_field = label (strings or integers; the labels of task.train, sorted)\n"
    "[data]   tokenizer = PATH (default: the one model.init records), seq_len = 128\n"
    "[train]  epochs = 3, global_batch = 32, seed = 42 (the head's initialisation, dropout and\n"
    "         the order of the examples), log_every = 10\n"
    "\n";

int trainer_demo_main(int argc, char **argv);
int trainer_export_main(int argc, char **argv);
int trainer_predict_main(int argc, char **argv);
int trainer_generate_main(int argc, char **argv);

static void on_signal(int sig) {
  (void)sig;
  train_request_stop();
}

static void print_train_help(bool finetune) {
  fputs(finetune ? finetune_usage : train_usage, stdout);
  fputs(train_config_help(), stdout);
}

/* Threads for this rank (train.threads, else the cores it owns). */
static int size_threads(const train_config *cfg, const comm_t *comm) {
  const char *why = "train.threads";
  int threads = cfg->threads ? cfg->threads : comm_default_threads(comm->local_size, &why);
  omp_set_num_threads(threads);
  if (comm->rank == 0)
    LOG_INFO(TRAINER, "%d rank(s), %d on this node, %d thread(s) each (from %s)", comm->size,
             comm->local_size, threads, why);
  return threads;
}

/* Training: every rank runs this. A failure every rank met alike is said
 * once (rank 0); one that only some ranks met ends the whole job, so that
 * no rank waits for them. */
static int train_main(int argc, char **argv, bool finetune) {
  status_t st = comm_process_init(&argc, &argv);
  if (st) {
    fprintf(stderr, "mlmpi-train: %s\n", status_message());
    return 1;
  }
  int rank, world;
  comm_process_rank(&rank, &world);
  train_config cfg;
  const char *init_from;
  bool help, uniform = true;
  comm_t *comm = NULL;
  init_from = NULL;
  st = finetune ? finetune_config_from_args(argc, argv, &cfg, &help)
                : train_config_from_args(argc, argv, &cfg, &init_from, &help);
  if (help) {
    if (rank == 0) print_train_help(finetune);
    comm_process_finalize();
    return 0;
  }
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGUSR1, &sa, NULL);
  /* comm_init's verdict is every rank's. */
  if (st == STATUS_OK) st = comm_init(&comm, cfg.comm_backend, cfg.timeout_s);
  if (st == STATUS_OK) st = train_run(&cfg, comm, size_threads(&cfg, comm), init_from, &uniform);
  /* A collective that failed on this rank (a dead or stuck peer) exits 3,
   * anything else 1. */
  bool peer = !uniform && (st == STATUS_COMM || st == STATUS_TIMEOUT);
  int rc = st == STATUS_OK ? 0 : peer ? 3 : 1;
  if (rc && !uniform && world > 1) {
    LOG_ERROR(TRAINER, "%s; aborting the job", status_message());
    comm_process_abort(rc);
  }
  if (rc && rank == 0) LOG_ERROR(TRAINER, "%s", status_message());
  comm_free(comm);
  comm_process_finalize();
  return rc;
}

int main(int argc, char **argv) {
#if defined(__x86_64__) && defined(__AVX2__)
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    fprintf(stderr,
            "mlmpi-train: this build needs a processor with AVX2 and FMA; rebuild with "
            "-DMLMPI_ARCH=x86-64 for older ones\n");
    return 1;
  }
#endif
  if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
    fputs(usage, stdout);
    return 0;
  }
  if (argc >= 2 && !strcmp(argv[1], "--help-config")) {
    print_train_help(false);
    return 0;
  }
  if (argc >= 2 && !strcmp(argv[1], "step")) return trainer_step_main(argc - 1, argv + 1);
  if (argc >= 2 && !strcmp(argv[1], "demo")) return trainer_demo_main(argc - 1, argv + 1);
  if (argc >= 2 && !strcmp(argv[1], "export")) return trainer_export_main(argc - 1, argv + 1);
  if (argc >= 2 && !strcmp(argv[1], "predict")) return trainer_predict_main(argc - 1, argv + 1);
  if (argc >= 2 && !strcmp(argv[1], "generate")) return trainer_generate_main(argc - 1, argv + 1);
  if (argc >= 2 && !strcmp(argv[1], "finetune")) return train_main(argc - 1, argv + 1, true);
  if (argc >= 2 && argv[1][0] != '-') {
    fprintf(stderr, "mlmpi-train: unknown command '%s' (see mlmpi-train --help)\n", argv[1]);
    return 2;
  }
  return train_main(argc, argv, false);
}
