/* tb.h: TensorBoard event files (events.out.tfevents.*): scalar summaries
 * as TFRecord-framed Event protobufs, so a run can be watched in
 * TensorBoard. Private to trainer/. Not thread-safe. */
#ifndef MLMPI_TB_H
#define MLMPI_TB_H

#include "core.h"

typedef struct tb_writer tb_writer;
/* Creates dir/events.out.tfevents.<time>.<host> with its version record. */
status_t tb_open(tb_writer **out, const char *dir);
/* Appends one event holding the n scalars tags[i] = values[i] at step. */
status_t tb_scalars(tb_writer *w, int64_t step, const char *const *tags, const float *values,
                    int n);
/* Flushes (the file is appended to as the run goes, and stays readable). */
status_t tb_flush(tb_writer *w);
void tb_close(tb_writer *w);

#endif
