-- A trained model's compiled arrays (churn.signals.model.compiled): an npz of numeric
-- arrays and a JSON layout, read with allow_pickle=False, that gives the same
-- probabilities as the skops estimator bit for bit without importing scikit-learn. NULL
-- when the pipeline could not be compiled (or was trained before): the estimator scores.
ALTER TABLE model_registry ADD COLUMN compiled BLOB;
