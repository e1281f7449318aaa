"""The networks and heads: language model, classifier, tagger, encoder-decoder, forecaster, their parts
(attention, CRF, pooling, embeddings, character CNN, dropout) and ensembles.
"""
