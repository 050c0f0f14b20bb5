/* serve_cmd.c: `mlmpi-data serve`: runs the dataset service on a shard
 * directory until SIGINT or SIGTERM, printing the address it is bound to. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service.h"

static const char serve_usage[] =
    "usage: mlmpi-data serve --data DIR [--bind HOST] [--port P] [--workers N] [--token-file F]\n"
    "  Serves the batches of the shards in DIR to trainers and `mlmpi-data batches --service`\n"
    "  over TCP (nng request/reply, protobuf messages). Every batch is a pure function of the\n"
    "  request, so any number of replicas can serve one job and a restarted one serves the\n"
    "  same bytes. Prints `listening on tcp://HOST:PORT` once bound; stops on SIGINT/SIGTERM.\n"
    "  --bind HOST      address to listen on (default 127.0.0.1); any address other than\n"
    "                   loopback needs --token-file\n"
    "  --port P         TCP port (default 7707; 0 picks a free one)\n"
    "  --workers N      request threads (default: the cores this process may use)\n"
    "  --token-file F   a shared secret (the file's text) that every request must carry;\n"
    "                   it is not encryption: use it on a trusted network\n";

int data_serve_main(int argc, char **argv) {
  static const struct option opts[] = {{"data", required_argument, 0, 'd'},
                                       {"bind", required_argument, 0, 'b'},
                                       {"port", required_argument, 0, 'p'},
                                       {"workers", required_argument, 0, 'w'},
                                       {"token-file", required_argument, 0, 't'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  svc_server_config cfg = svc_server_config_default();
  const char *token_file = NULL;
  opterr = 0;
  optind = 1;
  for (int c, li = 0; (c = getopt_long(argc, argv, "", opts, &li)) != -1;) {
    char *e = NULL;
    long v = 0;
    switch (c) {
      case 'd': cfg.data_dir = optarg; break;
      case 'b': cfg.bind = optarg; break;
      case 't': token_file = optarg; break;
      case 'p':
      case 'w':
        v = strtol(optarg, &e, 10);
        if (*e || e == optarg || v < (c == 'p' ? 0 : 1) || v > 65535) {
          fprintf(stderr, "mlmpi-data serve: --%s needs a number%s, not '%s'\n", opts[li].name,
                  c == 'p' ? " in 0..65535" : " >= 1", optarg);
          return 2;
        }
        *(c == 'p' ? &cfg.port : &cfg.workers) = (int)v;
        break;
      case 'h': fputs(serve_usage, stdout); return 0;
      default:
        fprintf(stderr, "mlmpi-data serve: unknown or incomplete option '%s' (see --help)\n",
                argv[optind - 1]);
        return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "mlmpi-data serve: unexpected argument '%s'\n", argv[optind]);
    return 2;
  }
  if (!cfg.data_dir) {
    fprintf(stderr, "mlmpi-data serve: --data DIR is required (see --help)\n");
    return 2;
  }
  if (!svc_is_loopback(cfg.bind) && !token_file) {
    fprintf(stderr,
            "mlmpi-data serve: refusing to bind %s without --token-file: only loopback "
            "addresses are served without a shared secret\n",
            cfg.bind);
    return 2;
  }
  char *token = NULL;
  if (token_file && svc_read_token(token_file, &token) != STATUS_OK) {
    fprintf(stderr, "mlmpi-data serve: %s\n", status_message());
    return 2;
  }
  cfg.token = token;
  /* The signals are taken by sigwait below; every thread started from here
   * on (ours and nng's) inherits the blocked mask. */
  sigset_t stop;
  sigemptyset(&stop);
  /* A signal ignored by whoever started us (a batch script protecting the
   * service from a preemption notice) stays ignored: sigwait would still
   * take a blocked, ignored signal. */
  struct sigaction old;
  if (sigaction(SIGINT, NULL, &old) != 0 || old.sa_handler != SIG_IGN) sigaddset(&stop, SIGINT);
  if (sigaction(SIGTERM, NULL, &old) != 0 || old.sa_handler != SIG_IGN) sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, NULL);
  signal(SIGPIPE, SIG_IGN);
  svc_server *s;
  if (svc_server_start(&s, &cfg) != STATUS_OK) {
    fprintf(stderr, "mlmpi-data serve: %s\n", status_message());
    free(token);
    return 1;
  }
  printf("listening on %s\n", svc_server_url(s));
  fflush(stdout);
  int sig = 0;
  sigwait(&stop, &sig);
  uint64_t replies, batches;
  svc_server_counts(s, &replies, &batches);
  LOG_INFO(DATASET, "stopping on %s after %llu replies (%llu batches)",
           sig == SIGINT ? "SIGINT" : "SIGTERM", (unsigned long long)replies,
           (unsigned long long)batches);
  svc_server_free(s);
  free(token);
  return 0;
}
