"""Sequence functions: the linear-chain CRF of TensorFlow Addons' `tfa.text`,
its marginals, and the transitions span tagging schemes allow."""

from keras_addons_qa.text.crf import crf_binary_score
from keras_addons_qa.text.crf import crf_constrained_decode
from keras_addons_qa.text.crf import crf_decode
from keras_addons_qa.text.crf import crf_filtered_inputs
from keras_addons_qa.text.crf import crf_forward
from keras_addons_qa.text.crf import crf_log_likelihood
from keras_addons_qa.text.crf import crf_log_norm
from keras_addons_qa.text.crf import crf_marginals
from keras_addons_qa.text.crf import crf_multitag_sequence_score
from keras_addons_qa.text.crf import crf_sequence_score
from keras_addons_qa.text.crf import crf_top_k_decode
from keras_addons_qa.text.crf import crf_unary_score
from keras_addons_qa.text.crf import viterbi_decode
from keras_addons_qa.text.tagging import allowed_transitions

__all__ = [
    "allowed_transitions",
    "crf_binary_score",
    "crf_constrained_decode",
    "crf_decode",
    "crf_filtered_inputs",
    "crf_forward",
    "crf_log_likelihood",
    "crf_log_norm",
    "crf_marginals",
    "crf_multitag_sequence_score",
    "crf_sequence_score",
    "crf_top_k_decode",
    "crf_unary_score",
    "viterbi_decode",
]
