"""The code of every registered generator model (MLflow "models from code"): promotion logs this file in
place of a pickled PythonModel, and `mlflow.pyfunc.load_model` runs it to get the model object, whose
`load_context` then reads the generator file. No pickle is written or read; loading needs this package.
"""

import mlflow.models

from search.pyfunc import GeneratorModel

mlflow.models.set_model(GeneratorModel())
