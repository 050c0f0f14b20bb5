/* main.c: the mlmpi-train executable: dispatches to its subcommands. */
#include <stdio.h>
#include <string.h>

#include "trainer.h"

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
    "\n"
    "`mlmpi-train <command> --help` describes each command.\n";

int trainer_demo_main(int argc, char **argv);
int trainer_train_main(int argc, char **argv);
int trainer_export_main(int argc, char **argv);

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
    char *args[] = {argv[0], "--help", NULL};
    return trainer_train_main(2, args);
  }
  if (argc >= 2 && !strcmp(argv[1], "step")) return trainer_step_main(argc - 1, argv + 1);
  if (argc >= 2 && !strcmp(argv[1], "demo")) return trainer_demo_main(argc - 1, argv + 1);
  if (argc >= 2 && !strcmp(argv[1], "export")) return trainer_export_main(argc - 1, argv + 1);
  if (argc >= 2 && argv[1][0] != '-') {
    fprintf(stderr, "mlmpi-train: unknown command '%s' (see mlmpi-train --help)\n", argv[1]);
    return 2;
  }
  return trainer_train_main(argc, argv);
}
