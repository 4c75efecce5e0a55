-- Countries and the world region each belongs to (UN M49 sub-regions), one row per country
-- the randomuser API produces. Small and slowly changing: a dimension table that pipelines
-- join users to (sql/pipelines/users_by_region.sql). Edits to it flow through cdc like any
-- other change, and the joined results in Cassandra follow.
CREATE TABLE countries (
    name        text PRIMARY KEY,
    region      text NOT NULL,
    continent   text NOT NULL
);

INSERT INTO countries (name, region, continent) VALUES
    ('Australia',      'Australia and New Zealand', 'Oceania'),
    ('Brazil',         'South America',             'Americas'),
    ('Canada',         'Northern America',          'Americas'),
    ('Denmark',        'Northern Europe',           'Europe'),
    ('Finland',        'Northern Europe',           'Europe'),
    ('France',         'Western Europe',            'Europe'),
    ('Germany',        'Western Europe',            'Europe'),
    ('India',          'Southern Asia',             'Asia'),
    ('Iran',           'Southern Asia',             'Asia'),
    ('Ireland',        'Northern Europe',           'Europe'),
    ('Mexico',         'Central America',           'Americas'),
    ('Netherlands',    'Western Europe',            'Europe'),
    ('New Zealand',    'Australia and New Zealand', 'Oceania'),
    ('Norway',         'Northern Europe',           'Europe'),
    ('Serbia',         'Southern Europe',           'Europe'),
    ('Spain',          'Southern Europe',           'Europe'),
    ('Switzerland',    'Western Europe',            'Europe'),
    ('Turkey',         'Western Asia',              'Asia'),
    ('Ukraine',        'Eastern Europe',            'Europe'),
    ('United Kingdom', 'Northern Europe',           'Europe'),
    ('United States',  'Northern America',          'Americas');
