/* train_eval.c: held-out evaluation during training: the model's eval
 * counters over train.eval_batches fixed batches of the holdout split
 * (evaluation batch e is step e of the holdout stream; no dropout; ELECTRA's
 * samples keyed by (train.seed, e, global sample index)), summed over
 * micro-batches and ranks, turned into the model's eval metrics. */
#include "run.h"

status_t run_evaluate(run_state *s, double *values) {
  const train_config *c = &s->cfg;
  const model_ops *m = s->mops;
  double sums[MODEL_MAX_COUNTERS] = {0};
  status_t st;
  for (int64_t e = 0; e < c->eval_batches; e++) {
    double den[2];
    if ((st = run_fetch(s, s->holdout, e, den))) return st;
    comm_set_context(s->comm, "evaluation");
    if ((st = comm_allreduce_f64(s->comm, den, 2))) return st;
    for (int64_t k = 0; k < s->accum; k++) {
      model_batch b = model_batch_of(&s->mb[k]);
      model_run run = run_micro(s, e, k, den, false);
      m->forward(s->model, &b, &run, sums);
    }
  }
  if ((st = comm_allreduce_f64(s->comm, sums, (size_t)m->n_eval_counters))) return st;
  m->eval_values(sums, (double)c->eval_batches, (double)c->global_batch, values);
  return STATUS_OK;
}
