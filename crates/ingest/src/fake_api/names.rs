//! The word pools the fake API draws users from. Small on purpose: the shape and the
//! variety of types matter to walflow, not the realism of the names.

pub struct Nationality {
    pub code: &'static str,
    pub country: &'static str,
    pub places: &'static [(&'static str, &'static str)],
    /// The real API sends numeric postcodes for some nationalities and strings for others.
    pub numeric_postcode: bool,
    pub phone_pattern: &'static str,
}

pub const NATIONALITIES: &[Nationality] = &[
    Nationality {
        code: "US",
        country: "United States",
        places: &[
            ("Billings", "Michigan"),
            ("Austin", "Texas"),
            ("Eugene", "Oregon"),
            ("Albany", "New York"),
        ],
        numeric_postcode: true,
        phone_pattern: "(###) ###-####",
    },
    Nationality {
        code: "GB",
        country: "United Kingdom",
        places: &[
            ("Leeds", "West Yorkshire"),
            ("Bristol", "Avon"),
            ("York", "North Yorkshire"),
            ("Bath", "Somerset"),
        ],
        numeric_postcode: false,
        phone_pattern: "0#### ######",
    },
    Nationality {
        code: "FR",
        country: "France",
        places: &[
            ("Lyon", "Rhône"),
            ("Nantes", "Loire-Atlantique"),
            ("Lille", "Nord"),
            ("Rennes", "Ille-et-Vilaine"),
        ],
        numeric_postcode: true,
        phone_pattern: "0#-##-##-##-##",
    },
    Nationality {
        code: "DE",
        country: "Germany",
        places: &[
            ("Köln", "Nordrhein-Westfalen"),
            ("Leipzig", "Sachsen"),
            ("Bremen", "Bremen"),
            ("Ulm", "Baden-Württemberg"),
        ],
        numeric_postcode: true,
        phone_pattern: "0###-#######",
    },
    Nationality {
        code: "BR",
        country: "Brazil",
        places: &[
            ("Natal", "Rio Grande do Norte"),
            ("Recife", "Pernambuco"),
            ("Santos", "São Paulo"),
            ("Belém", "Pará"),
        ],
        numeric_postcode: true,
        phone_pattern: "(##) ####-####",
    },
    Nationality {
        code: "CA",
        country: "Canada",
        places: &[
            ("Victoria", "British Columbia"),
            ("Halifax", "Nova Scotia"),
            ("Regina", "Saskatchewan"),
            ("Laval", "Québec"),
        ],
        numeric_postcode: false,
        phone_pattern: "I##-###-####",
    },
];

pub const FIRST_NAMES_FEMALE: &[&str] = &[
    "Jennie", "Ava", "Chloé", "Lea", "Ana", "Grace", "Maëlle", "Sofia", "Ida", "Olivia", "Emma",
    "Luna",
];
pub const FIRST_NAMES_MALE: &[&str] = &[
    "Liam", "Noah", "Hugo", "Jonas", "Rafael", "Ethan", "Louis", "Felix", "Mateo", "Oscar", "Leo",
    "Owen",
];
pub const LAST_NAMES: &[&str] = &[
    "Nichols", "Martin", "Schmidt", "Silva", "Walker", "Roux", "Becker", "Santos", "Wilson",
    "Moreau", "Fischer", "Costa", "Taylor", "Lambert",
];
pub const STREETS: &[&str] = &[
    "Valwood Pkwy",
    "Rue de la Mairie",
    "Bahnhofstraße",
    "Rua Treze",
    "Church Road",
    "Main Street",
    "Rue Principale",
    "Lindenweg",
    "Avenida Brasil",
    "Mill Lane",
];
pub const TIMEZONES: &[(&str, &str)] = &[
    ("-5:00", "Eastern Time (US & Canada), Bogota, Lima"),
    ("0:00", "Western Europe Time, London, Lisbon, Casablanca"),
    ("+1:00", "Brussels, Copenhagen, Madrid, Paris"),
    ("-3:00", "Brazil, Buenos Aires, Georgetown"),
    ("+9:30", "Adelaide, Darwin"),
    ("-8:00", "Pacific Time (US & Canada)"),
];
pub const ADJECTIVES: &[&str] = &[
    "yellow", "brave", "quiet", "happy", "silver", "lazy", "tiny", "golden",
];
pub const ANIMALS: &[&str] = &[
    "peacock", "koala", "tiger", "swan", "rabbit", "wolf", "panda", "goose",
];
