/* The serving form's compiled walk: what ServingForm.predict_encoded's numpy walk computes, for a whole batch in one
 * call that holds no Python state, so Python releases the GIL for it (app/contract/walk_kernel.py).
 *
 * Built by app/contract/walk_build.py (zig cc, one library per architecture, no C library linked), loaded with
 * ctypes. The tables are the form's own arrays (app/contract/serving_form.py explains them); per row:
 *   1. each model column's bucket: a numeric column's by binary search over its sorted split thresholds (the first
 *      threshold >= the value, numpy's searchsorted side="left"; NaN: the bucket after the last), a categorical
 *      column's from its look-up by the encoded code (NaN: the look-up's last entry);
 *   2. each group's row of the grouped table: the group's first row plus its columns' buckets times their strides;
 *   3. per tree, the AND of the groups' masks, its lowest set bit (the exit leaf), the leaf's slot by a de Bruijn
 *      multiply and shift, and the leaf's value added to the row's sum: from the baseline, tree by tree in order, as
 *      scikit-learn adds them, in double precision with no contraction (bit-identical to the numpy walk).
 * Returns 0, or -1 - r when row r holds a category code outside its column's look-up (nothing is read out of
 * bounds). WALK_SOURCE (set by the build) is the digest of this file, so a library built from another version of it
 * is never called. */

#include <stdint.h>

#ifndef WALK_SOURCE
#error "build with -DWALK_SOURCE=<digest of walk.c>: python -m app.contract.walk_build"
#endif

struct walk_tables {
    int64_t n_columns;
    const int64_t *source;     /* per column: its column of the encoded matrix */
    const int64_t *group;      /* its group */
    const int64_t *stride;     /* the multiplier of its bucket in the group's row */
    const int64_t *edges_at;   /* numeric: where its thresholds start in edges */
    const int64_t *edges_len;  /* numeric: how many; -1 for a categorical column */
    const double *edges;
    const int64_t *lookup_at;  /* categorical: where its look-up starts in lookup */
    const int64_t *lookup_len;
    const int64_t *lookup;     /* bucket of each code, then of NaN */
    int64_t n_groups;
    const int64_t *group_first; /* the grouped table's row of each group's first combination */
    const void *grouped;        /* rows x n_trees masks, 32 or 64 bits */
    int64_t n_trees;
    const double *leaf_values;  /* n_trees x n_slots */
    int64_t n_slots;
    uint64_t sequence;          /* the de Bruijn sequence, and the shift that leaves a bit's number */
    int64_t shift;
    double baseline;
};

uint64_t walk_source(void) { return (uint64_t)WALK_SOURCE; }

/* Each group's table row for one row of the encoded matrix; 0, or -1 for a code outside its look-up. */
static int group_rows(const struct walk_tables *t, const double *row, int64_t *rows) {
    for (int64_t g = 0; g < t->n_groups; g++) rows[g] = t->group_first[g];
    for (int64_t j = 0; j < t->n_columns; j++) {
        double v = row[t->source[j]];
        int64_t bucket;
        int64_t n = t->edges_len[j];
        if (n >= 0) {
            if (v != v) {
                bucket = n + 1;
            } else {
                const double *e = t->edges + t->edges_at[j];
                int64_t lo = 0, hi = n;
                while (lo < hi) {
                    int64_t mid = lo + ((hi - lo) >> 1);
                    if (e[mid] < v) lo = mid + 1; else hi = mid;
                }
                bucket = lo;
            }
        } else {
            const int64_t *lookup = t->lookup + t->lookup_at[j];
            int64_t size = t->lookup_len[j];
            if (v != v) {
                bucket = lookup[size - 1];
            } else {
                if (!(v >= 0.0 && v < (double)size)) return -1;
                bucket = lookup[(int64_t)v];
            }
        }
        rows[t->group[j]] += bucket * t->stride[j];
    }
    return 0;
}

#define WALK(NAME, MASK)                                                                                      \
    int64_t NAME(const struct walk_tables *t, const double *matrix, int64_t n_rows, int64_t n_features,         \
                 int64_t *rows, MASK *masks, double *out) {                                                   \
        const MASK *grouped = (const MASK *)t->grouped;                                                       \
        const MASK sequence = (MASK)t->sequence;                                                              \
        for (int64_t r = 0; r < n_rows; r++) {                                                                \
            if (group_rows(t, matrix + r * n_features, rows) != 0) return -1 - r;                             \
            const MASK *first = grouped + rows[0] * t->n_trees;                                               \
            for (int64_t k = 0; k < t->n_trees; k++) masks[k] = first[k];                                     \
            for (int64_t g = 1; g < t->n_groups; g++) {                                                       \
                const MASK *next = grouped + rows[g] * t->n_trees;                                            \
                for (int64_t k = 0; k < t->n_trees; k++) masks[k] &= next[k];                                 \
            }                                                                                                 \
            double sum = t->baseline;                                                                         \
            const double *values = t->leaf_values;                                                            \
            for (int64_t k = 0; k < t->n_trees; k++, values += t->n_slots) {                                  \
                MASK exit_bit = masks[k] & (MASK)(0 - masks[k]);                                              \
                sum += values[(MASK)(exit_bit * sequence) >> t->shift];                                       \
            }                                                                                                 \
            out[r] = sum;                                                                                     \
        }                                                                                                     \
        return 0;                                                                                             \
    }

WALK(walk_u32, uint32_t)
WALK(walk_u64, uint64_t)
