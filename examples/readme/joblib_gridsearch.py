import joblib
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

import cloudpool.joblib  # noqa: F401  registers the "cloudpool" joblib backend

if __name__ == "__main__":
    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1, 10], "gamma": ["scale", 0.1]}
    with joblib.parallel_config(backend="cloudpool"):        # local worker processes
        search = GridSearchCV(SVC(), grid, cv=3, n_jobs=-1).fit(X, y)
    print(search.best_params_, round(search.best_score_, 4))
    # Every fit on AWS Lambda instead (needs an account and a deployed runtime):
    # joblib.parallel_config(backend="cloudpool", compute="aws_lambda",
    #                        storage="s3://my-bucket/cloudpool", max_workers=200)
