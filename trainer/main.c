/* main.c: the mlmpi-train executable: dispatches to its subcommands. */
#include <stdio.h>
#include <string.h>

#include "trainer.h"

static const char usage[] =
    "usage: mlmpi-train <command> [options]\n"
    "\n"
    "commands:\n"
    "  step   one forward+backward of a model on given weights and batch (the oracle hook)\n"
    "  demo   initialise a model and train it on a synthetic batch, printing the loss\n"
    "\n"
    "`mlmpi-train <command> --help` describes each command.\n";

int trainer_demo_main(int argc, char **argv);

int main(int argc, char **argv) {
#if defined(__x86_64__) && defined(__AVX2__)
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    fprintf(stderr,
            "mlmpi-train: this build needs a processor with AVX2 and FMA; rebuild with "
            "-DMLMPI_ARCH=x86-64 for older ones\n");
    return 1;
  }
#endif
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fputs(usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (!strcmp(argv[1], "step")) return trainer_step_main(argc - 1, argv + 1);
  if (!strcmp(argv[1], "demo")) return trainer_demo_main(argc - 1, argv + 1);
  fprintf(stderr, "mlmpi-train: unknown command '%s' (see mlmpi-train --help)\n", argv[1]);
  return 2;
}
