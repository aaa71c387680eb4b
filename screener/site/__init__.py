"""The site's operation of the model: silent start or live (:mod:`.mode`) and the audit draw
against verification bias (:mod:`.audit`)."""
