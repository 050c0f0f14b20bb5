/* task.h: what the batch source (source.c) needs of a labelled task beyond
 * dataset.h. Private to dataset/. */
#ifndef MLMPI_TASK_H
#define MLMPI_TASK_H

#include "dataset.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The tokenizer's path as task_open was given it, resolved to an absolute
 * path where it exists (as `mlmpi-data shard` records it). Owned by t. */
const char *task_tokenizer_path(const task_data *t);

#ifdef __cplusplus
}
#endif
#endif
