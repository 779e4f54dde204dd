"""The old home of the feature transformer, kept so bundles written before ``app.contract`` existed still load.

Their ``transformer.skops`` names ``app.features.FeatureTransformer``; skops imports the type by that name.
New bundles name ``app.contract.features.FeatureTransformer``. Nothing in the project imports this module.
"""

from app.contract.features import FeatureTransformer

__all__ = ["FeatureTransformer"]
