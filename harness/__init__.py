"""bytegolf: compare weight formats by the bytes of a real artifact and the model it decodes to.

The pipeline, one subpackage per stage (each imports only the stages above it in this list):

    artifact   container file, packing, layout, reshape: the decoder, and all the code an artifact needs
    data       tokenizer, shards, the data bundle, evaluation windows
    measure    evaluation (bpb, KL divergence), error metrics, byte accounting, code bytes
    model      the GPT, checkpoints, adapters, calibration Grams, training
    quantize   the tensor plan, LQER, the encoder, block calibration
    run        one point: quantize, write, decode, check, evaluate; sweeps and the result store
    search     landing on a byte budget, allocation across tensors
    study      the equal-bytes compare, statistics, fronts, reports
    tools      bench, fuzz and inspection scripts

Formats (bytegolf.formats) and codecs (bytegolf.codecs) sit below all of them, beside errors and registry.
"""

__version__ = "0.1.0"
