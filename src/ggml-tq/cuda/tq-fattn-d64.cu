// llama-tq: flash-attention decode instances for head size 64 (see tq-fattn.cuh)
#include "tq-fattn-impl.cuh"

#define X(K, V) TQ_FA_INSTANCE_NC(64, K, V, 2) TQ_FA_INSTANCE_NC(64, K, V, 4) TQ_FA_INSTANCE_NC(64, K, V, 8)
TQ_FA_PAIRS(X)
#undef X
