/* train_ckpt.c: the training run's checkpoints: the optimizer state
 * gathered from its owners (ZeRO-1) and written by rank 0, and the weights
 * (and state) at start: resumed, taken from another run's checkpoint, or
 * fresh. The optimizer's state is whatever list optim_states gives. */
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "run.h"

/* Lists the optimizer's state buffers in o (names, no buffers yet). */
static optim_state *list_states(run_state *s, ckpt_optim *o, optim_state st[OPTIM_MAX_STATES]) {
  o->n = optim_states(s->opt, st);
  for (int i = 0; i < o->n; i++) o->names[i] = st[i].name;
  return st;
}

static void free_bufs(ckpt_optim *o) {
  for (int i = 0; i < o->n; i++) {
    mem_free(o->bufs[i]);
    o->bufs[i] = NULL;
  }
}

/* Buffers of the whole layout for every state (freed with free_bufs). */
static status_t alloc_bufs(ckpt_optim *o, size_t floats) {
  for (int i = 0; i < o->n; i++)
    if (!(o->bufs[i] = mem_alloc(floats * sizeof(float), "optimizer state"))) return STATUS_NOMEM;
  return STATUS_OK;
}

/* The optimizer state in the whole layout: the optimizer's own buffers, or
 * (ZeRO-1) every rank's slice gathered into new ones (*owned: the caller
 * frees them). */
static status_t gather_optim(run_state *s, ckpt_optim *o, bool *owned) {
  const size_t total = s->mops->params(s->model)->total, n = s->hi - s->lo;
  optim_state st[OPTIM_MAX_STATES];
  list_states(s, o, st);
  o->taken = optim_steps_taken(s->opt);
  o->skipped = optim_steps_skipped(s->opt);
  *owned = s->cfg.zero != 0;
  if (!*owned) {
    for (int i = 0; i < o->n; i++) o->bufs[i] = st[i].data;
    return STATUS_OK;
  }
  status_t r = alloc_bufs(o, total);
  comm_set_context(s->comm, "gathering optimizer state");
  for (int i = 0; i < o->n && r == STATUS_OK; i++) {
    memcpy(o->bufs[i] + s->lo, st[i].data, n * sizeof(float));
    r = comm_allgather(s->comm, o->bufs[i], s->counts);
  }
  return r;
}

status_t run_save(run_state *s, int64_t steps_done) {
  return run_save_as(s, steps_done, NULL, NULL);
}

status_t run_save_as(run_state *s, int64_t steps_done, const char *name, const char *task_json) {
  if (!s->cfg.ckpt_dir[0]) return STATUS_OK;
  ckpt_optim o = {0};
  bool owned = false;
  status_t st = gather_optim(s, &o, &owned);
  if (st != STATUS_OK && owned) free_bufs(&o);
  if (st != STATUS_OK) return st; /* a failed collective: the job ends */
  if (s->rank == 0) {
    ckpt_info info = {steps_done, s->world, batch_source_fingerprint(s->data), s->cfg.seed};
    ckpt_extra x = {.tokenizer = batch_source_tokenizer(s->data),
                    .tokenizer_fingerprint = batch_source_tokenizer_fingerprint(s->data),
                    .task_json = task_json ? task_json : s->task_json,
                    .name = name};
    st = ckpt_save_ex(s->cfg.ckpt_dir, &info, &x, s->mops->params(s->model),
                      s->mops->param_buf(s->model), &o, s->cfg_text, s->cfg.ckpt_keep);
    if (st == STATUS_OK && name)
      LOG_INFO(TRAINER, "checkpoint: %s/%s (step %lld)", s->cfg.ckpt_dir, name,
               (long long)steps_done);
    else if (st == STATUS_OK)
      LOG_INFO(TRAINER, "checkpoint: %s/step-%lld", s->cfg.ckpt_dir, (long long)steps_done);
  }
  if (owned) free_bufs(&o);
  /* Every rank learns whether rank 0's write worked. */
  double ok[1] = {st == STATUS_OK};
  comm_set_context(s->comm, "checkpoint at step %lld", (long long)steps_done);
  status_t cs = comm_broadcast(s->comm, ok, sizeof ok, 0);
  if (cs) return cs;
  if (ok[0]) return st;
  /* A failed write (a full disk, say) is every rank's verdict now: the ranks
   * end together and rank 0 alone says why, naming the path. An abort here
   * could kill rank 0 before its message is out. */
  s->uniform = true;
  if (s->rank) st = status_set(STATUS_IO, "rank 0 could not write the checkpoint");
  return st;
}

/* Rank 0: the checkpoint to resume from (ckpt.resume), or "" for none. */
static status_t resume_path(const train_config *c, char *path, size_t n) {
  path[0] = 0;
  if (!strcmp(c->ckpt_resume, "auto")) {
    if (!c->ckpt_dir[0]) return status_set(STATUS_CONFIG, "ckpt.resume = auto needs ckpt.dir");
    return ckpt_find_latest(c->ckpt_dir, path, n);
  }
  if (strcmp(c->ckpt_resume, "none")) snprintf(path, n, "%s", c->ckpt_resume);
  return STATUS_OK;
}

/* Rank 0's reading: what it found goes into head (ok, resumed, step,
 * steps taken, steps skipped); the state into o when resuming. */
static status_t load_on_root(run_state *s, const char *init_from, ckpt_optim *o, double head[5]) {
  const train_config *c = &s->cfg;
  const param_table *t = s->mops->params(s->model);
  float *params = s->mops->param_buf(s->model);
  char path[4096];
  ckpt_info info;
  status_t st = resume_path(c, path, sizeof path);
  if (st == STATUS_OK && path[0]) {
    st = alloc_bufs(o, t->total);
    if (st == STATUS_OK) st = ckpt_load(path, &info, t, params, o);
    if (st == STATUS_OK && info.data_fingerprint != batch_source_fingerprint(s->data))
      st = status_set(STATUS_CONFIG, "checkpoint %s was made on other data or data settings", path);
    if (st == STATUS_OK) {
      head[1] = 1;
      head[2] = (double)info.step;
      head[3] = (double)o->taken;
      head[4] = (double)o->skipped;
      LOG_INFO(TRAINER, "resuming from %s (step %lld, written by %d rank(s))", path,
               (long long)info.step, info.world_size);
    }
  } else if (st == STATUS_OK && c->finetune) {
    st = ft_load_init(s);
  } else if (st == STATUS_OK && init_from) {
    st = ckpt_load(init_from, &info, t, params, NULL);
    if (st == STATUS_OK)
      LOG_INFO(TRAINER, "weights from %s; fresh optimizer and schedule", init_from);
  } else if (st == STATUS_OK) {
    s->mops->init_weights(s->model, (uint64_t)c->seed);
  }
  head[0] = st == STATUS_OK;
  return st;
}

/* Every rank: the weights and, when resuming, the state, from rank 0. */
static status_t receive(run_state *s, ckpt_optim *o, const double head[5], int64_t *start) {
  const size_t total = s->mops->params(s->model)->total, bytes = total * sizeof(float);
  status_t st = comm_broadcast(s->comm, s->mops->param_buf(s->model), bytes, 0);
  if (st || !head[1]) return st;
  if (s->rank && (st = alloc_bufs(o, total))) return st;
  optim_state own[OPTIM_MAX_STATES];
  optim_states(s->opt, own);
  for (int i = 0; i < o->n && st == STATUS_OK; i++) {
    st = comm_broadcast(s->comm, o->bufs[i], bytes, 0);
    if (st == STATUS_OK) memcpy(own[i].data, o->bufs[i] + s->lo, (s->hi - s->lo) * sizeof(float));
  }
  if (st) return st;
  optim_set_counters(s->opt, (int64_t)head[3], (uint64_t)head[4]);
  *start = (int64_t)head[2];
  return STATUS_OK;
}

status_t run_init_weights(run_state *s, const char *init_from, int64_t *start) {
  ckpt_optim o = {0};
  optim_state st_list[OPTIM_MAX_STATES];
  list_states(s, &o, st_list);
  double head[5] = {1, 0, 0, 0, 0};
  status_t st = STATUS_OK;
  *start = 0;
  if (s->rank == 0) st = load_on_root(s, init_from, &o, head);
  s->uniform = true; /* rank 0's verdict reaches everyone */
  comm_set_context(s->comm, "start-up weight broadcast");
  status_t cs = comm_broadcast(s->comm, head, sizeof head, 0);
  if (cs) {
    st = cs;
    s->uniform = false;
  } else if (!head[0]) {
    if (s->rank) st = status_set(STATUS_IO, "rank 0 could not load the weights");
  } else {
    st = receive(s, &o, head, start);
    s->uniform = false;
  }
  free_bufs(&o);
  return st;
}
